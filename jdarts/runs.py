"""What every run shares: workdir, config.json, metrics, progress, devices, checkpoints, NaN stop, preemption.

`jdarts search` (`jdarts.search_loop`) and `jdarts train` (`jdarts.train_loop`)
are thin loops on a `Run`:

    run = Run(cfg, workdir, "search")          # workdir, config.json, compile cache
    num_devices, global_devices = run.devices()  # ConfigError for impossible settings
    restored = run.open_checkpoints(spe, host_state)  # resume, if a checkpoint exists
    state, step, compile_s = run.steps(state, start, total, advance, on_step=...)
    run.finish(step, summary)                    # 'final' row, summary.json

`Run.steps` drives the step function: it fetches metrics every log interval
(and raises `NonFiniteLossError` naming the step and the last good checkpoint),
writes 'train' rows to `metrics.jsonl` with a throughput, advances the
progress bar, and on SIGTERM/SIGINT saves a checkpoint and raises `Preempted`.
Only process 0 writes logs and outputs; every process writes its part of
each checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jdarts import checkpoint as ckpt_lib
from jdarts import event_writer
from jdarts import host_memory
from jdarts import parallel
from jdarts.progress import LineProgress, progress_bar  # noqa: F401 (re-exported)
from jdarts.config_lib import ConfigError

log = logging.getLogger("jdarts")


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN or infinite loss; the message names the step and checkpoint."""


class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint."""

  def __init__(self, msg: str, signum: Optional[int]):
    super().__init__(msg)
    self.signum = signum


# One program copies the whole tree (an eager tree_map(jnp.copy) compiles one per
# leaf shape): for a copy the step may donate while the original stays in use.
copy_tree = jax.jit(lambda tree: jax.tree_util.tree_map(jnp.copy, tree))


def _need(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


def check_int(cfg, key: str, low: int, what: str = "", block: str = "") -> None:
  """ConfigError unless `cfg[key]` is an integer >= `low` (`what`: a hint on its meaning)."""
  v = cfg.get(key)
  _need(isinstance(v, int) and not isinstance(v, bool) and v >= low,
        f"{block}{key} must be an integer >= {low}{what}, got {v!r}.")


def validate_blocks(cfg) -> None:
  """Raises ConfigError naming a bad key of what search and train share.

  The `parallel` and `checkpoint` blocks and the top-level run keys
  (log_every, max_steps, epochs, batch_size, seed).
  """
  p = cfg.parallel
  _need(p.backend in parallel.BACKENDS, f"parallel.backend={p.backend!r} is unknown; "
        f"choose one of {', '.join(parallel.BACKENDS)}.")
  check_int(p, "num_devices", 0, " (0: every local device)", "parallel.")
  c = cfg.checkpoint
  check_int(c, "every_steps", 0, " (0: every epoch)", "checkpoint.")
  check_int(c, "keep", 1, "", "checkpoint.")
  check_int(cfg, "log_every", 1)
  check_int(cfg, "max_steps", 0, " (0: no limit)")
  check_int(cfg, "epochs", 1)
  check_int(cfg, "batch_size", 1)
  check_int(cfg, "seed", 0)


def to_jsonable(tree):
  """Arrays -> nested lists, so a pytree of arrays can be written as JSON."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), tree)


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (temp file + rename), so readers never see half a file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks that files can be written in it.

  Raises:
    ConfigError: no workdir given, a path that exists and is not a directory,
      a directory that cannot be created (e.g. below a regular file, or on a
      read-only file system), or one where a file cannot be written.
  """
  if not workdir:
    raise ConfigError("--workdir is required, e.g. --workdir=runs/quickstart.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} exists and is not a directory; "
                      "choose another path.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} cannot be created ({e.strerror or e}); "
                      "choose a path in a writable directory.") from None
  probe = os.path.join(workdir, f".jdarts-write-test-{os.getpid()}")
  try:  # permission bits do not tell (root, ACLs, read-only mounts): try it
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} is not writable ({e.strerror or e}); "
                      "fix its permissions or choose another path.") from None
  return workdir


# Config keys (dotted; a trailing '.' is a whole block) a rerun in the same
# workdir may change: they do not change what the checkpoint holds or the
# numbers the run computes, only how long it runs, what it prints and where
# it finds things. Anything else differing means another experiment.
RESUME_SAFE_KEYS = ("max_steps", "log_every", "progress", "compilation_cache_dir",
                    "tensorboard", "report", "checkpoint.", "parallel.num_devices",
                    "parallel.backend", "data.data_dir", "data.num_threads", "drop_init_programs",
                    "data.worker_count", "hypergrad.", "hypergrad_probe_every",
                    "eval_batch_size", "eval_every_epochs", "collapse.")


# Keys newer than some workdirs, with the value that reproduces the older runs.
NEW_KEY_DEFAULTS = {"num_seeds": 1, "data.seed": -1}


def _flatten(tree, prefix: str = "") -> Dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_same_experiment(workdir: str, config_json: Dict[str, Any]) -> None:
  """Refuses a workdir that holds another experiment's run.

  A workdir whose `config.json` differs from `config_json` in a key outside
  `RESUME_SAFE_KEYS` is refused once it holds results (`metrics.jsonl` or a
  checkpoint): resuming would mix two experiments. A workdir without results
  (e.g. a run that stopped at a data error) is reused.

  Raises:
    ConfigError: naming the differing keys (old -> new) and the fixes.
  """
  path = os.path.join(workdir, "config.json")
  ckpts = os.path.join(workdir, "checkpoints")
  has_results = (os.path.exists(os.path.join(workdir, "metrics.jsonl")) or
                 (os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))))
  if not (os.path.isfile(path) and has_results):
    return
  try:
    with open(path) as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError):
    return  # unreadable: the checkpoint's own structure check still guards the resume
  new = _flatten(config_json)
  # Keys added after a workdir was written count as their default there.
  old = {**{k: v for k, v in NEW_KEY_DEFAULTS.items() if k in new}, **old}
  safe = lambda k: any(k == s or (s.endswith(".") and k.startswith(s))
                       for s in RESUME_SAFE_KEYS)
  diff = [k for k in sorted(set(old) | set(new))
          if not safe(k) and old.get(k, "<unset>") != new.get(k, "<unset>")]
  if diff:
    shown = ", ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
                      for k in diff[:4])
    more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
    raise ConfigError(
        f"--workdir={workdir} holds a run of another config ({shown}{more}); use a new "
        "--workdir, or the same values to resume it (only "
        f"{', '.join(k.rstrip('.') for k in RESUME_SAFE_KEYS[:3])}, ... may change).")


def enable_compilation_cache(path: str) -> None:
  """Persists compiled XLA programs, so a repeated or resumed run skips compiling.

  The cache only saves time: a directory that cannot be created is a warning,
  and the run goes on without it.
  """
  if not path:
    return
  path = os.path.expanduser(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    log.warning("compilation_cache_dir=%s cannot be created (%s); running without the "
                "compilation cache (set --config.compilation_cache_dir='' to silence this)",
                path, e.strerror or e)
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def trim_jsonl(path: str, keep: Callable[[Dict[str, Any]], bool]) -> int:
  """Keeps the lines of a JSON-lines file for which `keep(row)` holds; atomic.

  A resumed run replays the steps after its checkpoint, so the rows those steps
  wrote before the interruption are dropped instead of appearing twice.

  Returns:
    The number of rows dropped (0 if the file does not exist).
  """
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a kill
        dropped += 1
        continue
      if keep(row):
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return dropped


class MetricsWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, step: int, kind: str, values: Dict[str, Any]) -> None:
    row = {"step": int(step), "kind": kind, "time": time.time()}
    row.update({k: float(v) if np.ndim(v) == 0 else to_jsonable(v)
                for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


class Run:
  """The shared machinery of one `jdarts search` or `jdarts train` run.

  Creating it prepares `workdir`, turns on the compilation cache and (on
  process 0) writes `config.json`.

  Args:
    cfg: the resolved config (its `log_every`, `checkpoint`, `parallel`,
      `batch_size`, `progress`, `compilation_cache_dir`).
    workdir: output directory; created if absent.
    name: 'search' or 'train' (progress bar and messages).
    finite_keys: metric names that must stay finite (e.g. ('train_loss',)).
    nan_hint: the fix the NaN error suggests.
  """

  def __init__(self, cfg, workdir: str, name: str, *, finite_keys: Tuple[str, ...],
               nan_hint: str):
    prepare_workdir(workdir)
    enable_compilation_cache(cfg.get("compilation_cache_dir", ""))
    self.cfg, self.workdir, self.name = cfg, workdir, name
    self.finite_keys, self.nan_hint = finite_keys, nan_hint
    self.main = jax.process_index() == 0
    self.t_start = time.time()
    self.writer = None
    if self.main:  # metrics.jsonl, and the same rows as TensorBoard events (workdir/tb)
      tb = event_writer.open_tensorboard(workdir) if cfg.get("tensorboard", True) else None
      self.writer = event_writer.MultiWriter([MetricsWriter(workdir)] + ([tb] if tb else []))
    self.ckpt: Optional[ckpt_lib.Checkpointer] = None
    self.bar = None
    self._pending: List[Tuple[int, Any]] = []
    self._on_fetch: Optional[Callable] = None
    config_json = json.loads(cfg.to_json_best_effort())
    check_same_experiment(workdir, config_json)
    # Metrics logged as their mean since the previous row (`steps(interval_means=)`).
    self._interval_means: Tuple[str, ...] = ()
    self._sums: Dict[str, float] = {}
    self._count = 0
    if self.main:
      write_json(os.path.join(workdir, "config.json"), config_json)

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def devices(self) -> Tuple[int, int]:
    """(local devices used, global device count); ConfigError for impossible settings."""
    cfg = self.cfg
    num_devices = cfg.parallel.num_devices or jax.local_device_count()
    if num_devices > jax.local_device_count():
      raise ConfigError(f"parallel.num_devices={num_devices} but only {jax.local_device_count()}"
                        " local devices exist; lower it or use 0 for all.")
    if jax.process_count() > 1 and num_devices != jax.local_device_count():
      raise ConfigError("with several processes every device takes part; use "
                        "--config.parallel.num_devices=0.")
    global_devices = num_devices * jax.process_count()
    try:
      parallel.check_divisible(cfg.batch_size, global_devices)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    return num_devices, global_devices

  def total_steps(self, steps_per_epoch: int) -> int:
    """The run's length: `epochs` epochs, cut at `max_steps` when that is set."""
    total = self.cfg.epochs * steps_per_epoch
    return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

  def parallel_step(self, per_device_step: Callable, num_devices: int, global_devices: int,
                    num_batches: int) -> parallel.ParallelStep:
    """`per_device_step` wrapped for the configured backend and devices."""
    return parallel.ParallelStep(
        per_device_step,
        backend=self.cfg.parallel.backend if global_devices > 1 else "none",
        devices=None if jax.process_count() > 1 else jax.local_devices()[:num_devices],
        num_batches=num_batches)

  def open_checkpoints(self, steps_per_epoch: int, host_state):
    """Opens workdir/checkpoints (if enabled) and restores the latest checkpoint.

    Args:
      steps_per_epoch: checkpoints are written every epoch unless
        `checkpoint.every_steps` says otherwise.
      host_state: a (numpy) state of the run's structure, the restore template.

    Returns:
      (state, extra, step) of the latest good checkpoint, or None.
    """
    c = self.cfg.checkpoint
    if not c.enabled:
      return None
    self.ckpt = ckpt_lib.Checkpointer(
        self.path("checkpoints"), max_to_keep=c.keep,
        save_every_steps=c.every_steps or steps_per_epoch, async_save=c.async_save)
    restored = self.ckpt.restore_latest(host_state)
    if restored is not None:
      log.info("resuming from the checkpoint of step %d in %s", restored[2],
               self.ckpt.directory)
      if self.writer is not None and hasattr(self.writer, "resumed"):
        self.writer.resumed(restored[2])
    return restored

  def say(self, msg: str) -> None:
    """Prints a line on process 0, above the progress bar if there is one."""
    if self.main:
      (self.bar.write if self.bar is not None else print)(msg)

  def flush(self):
    """Fetches the pending metrics; raises NonFiniteLossError on a NaN/inf loss.

    Returns:
      The list of (step, host metrics) fetched.
    """
    fetched, self._pending = jax.device_get(self._pending), []
    for s, m in fetched:
      # A metric is a scalar, or one value per seed (K,) in a several-seed search.
      bad = {k: np.asarray(m[k]) for k in self.finite_keys if not np.all(np.isfinite(m[k]))}
      if bad:
        good = self.ckpt.latest_step() if self.ckpt is not None else None
        where = (f"the last good checkpoint is step {good} in {self.ckpt.directory} (a rerun "
                 "resumes from it)" if good is not None else "no checkpoint was written")
        first = next(iter(bad.values()))
        if first.ndim:  # name the seeds that failed (seed k is cfg.seed + k)
          seeds = [self.cfg.seed + int(i) for i in np.flatnonzero(~np.isfinite(first))]
          values = ", ".join(f"{k} {v.tolist()}" for k, v in bad.items())
          raise NonFiniteLossError(
              f"loss became {first[~np.isfinite(first)][0]} for seed(s) "
              f"{', '.join(map(str, seeds))} ({values}) at step {s}; {where}; {self.nan_hint}")
        values = ", ".join(f"{k} {float(v)}" for k, v in bad.items())
        raise NonFiniteLossError(f"loss became {float(first)} ({values}) at step "
                                 f"{s}; {where}; {self.nan_hint}")
    for _, m in fetched:
      for k in self._interval_means:
        if k in m:
          v = m[k]
          v = float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64)
          self._sums[k] = self._sums.get(k, 0.0) + v
      self._count += 1
    if self._on_fetch is not None:
      self._on_fetch(fetched)
    return fetched

  def _take_interval_means(self) -> Dict[str, float]:
    out = {k: v / max(self._count, 1) for k, v in self._sums.items()}
    self._sums, self._count = {}, 0
    return out

  def save(self, step: int, host_state: Callable[[], Any], extra: Callable[[int], Dict],
           force: bool = False) -> bool:
    """Checkpoints when due (or `force`), after checking the pending metrics are finite."""
    if self.ckpt is None or not (force or self.ckpt.should_save(step)):
      return False
    self.flush()  # never checkpoint a state that came from a non-finite loss
    return self.ckpt.save(step, host_state(), extra(step), force=force)

  def steps(self, state, start: int, total: int, advance: Callable, *, items_per_step: int,
            steps_per_epoch: int, host_state: Callable[[Any], Any],
            extra: Callable[[int], Dict], on_log: Optional[Callable] = None,
            on_step: Optional[Callable] = None, on_fetch: Optional[Callable] = None,
            rate_name: str = "images_per_sec", interval_means: Tuple[str, ...] = ()):
    """Runs `advance` from step `start` to `total`; logs, checkpoints and stops cleanly.

    Args:
      state: the (device) state.
      start, total: first and end step.
      advance: `(state, step) -> (state, device metrics)`, one step.
      items_per_step: examples per step, for the throughput.
      steps_per_epoch: rows are also written at every epoch end.
      host_state: `state -> host copy` for checkpoints.
      extra: `step -> dict` saved beside the state (data positions, loop sums).
      on_log: `(step, last host metrics, rate)` after each 'train' row.
      on_step: `(step, state)` after each step, before its checkpoint; a true
        return ends the run after that step, as if it were the last.
      on_fetch: `([(step, host metrics), ...])` for every batch of metrics
        fetched (every step's metrics pass through it once).
      rate_name: the throughput's name in the rows.
      interval_means: metrics whose 'train' row value is their mean over the
        steps since the previous row (e.g. a 0/1 per step becomes a fraction),
        not the last step's value.

    Returns:
      (state, step reached, seconds of the first step including compilation).

    Raises:
      NonFiniteLossError: see `flush`.
      Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
    """
    cfg = self.cfg
    self.bar = progress_bar(total, start, cfg.get("progress", True) and self.main, self.name)
    compile_s, t_window, items, step = None, time.time(), 0, start
    self._on_fetch = on_fetch
    self._interval_means, self._sums, self._count = tuple(interval_means), {}, 0
    preempt = ckpt_lib.PreemptionFlag().install()
    try:
      while step < total and not preempt.is_set:
        t0 = time.time()
        if compile_s is None:  # minutes of silent compiling would read as a hang
          if cfg.get("drop_init_programs", True) and (mb := host_memory.drop_compiled()):
            log.info("host memory %.0f -> %.0f MB: the initialisation's programs dropped", *mb)
          log.info("compiling the %s step (the first call) ...", self.name)
        state, metrics = advance(state, step)
        step += 1
        self._pending.append((step, metrics))
        if compile_s is None:
          jax.block_until_ready(metrics)
          compile_s = time.time() - t0
          log.info("first step (compilation included) took %.1f s", compile_s)
          if (released := host_memory.release_measured()):  # compiler garbage, else kept
            log.info("host memory %.0f -> %.0f MB: compiler's freed memory handed back", *released)
          t_window, items = time.time(), 0
        else:
          items += items_per_step
        if step % cfg.log_every == 0 or step == total or step % steps_per_epoch == 0:
          fetched = self.flush()
          last = dict(fetched[-1][1]) if fetched else {}
          last.update(self._take_interval_means())
          rate = items / max(time.time() - t_window, 1e-9)
          t_window, items = time.time(), 0
          if self.writer is not None:
            self.writer.write(step, "train", dict(last, **{rate_name: rate}))
          if on_log is not None:
            on_log(step, last, rate)
        if self.bar is not None:
          self.bar.update(1)
        stop = on_step is not None and on_step(step, state)
        self.save(step, lambda: host_state(state), extra)
        if stop:  # the loop asked to end here (early stopping): a normal end
          break
    finally:
      preempt.uninstall()
      if self.bar is not None:
        self.bar.close()
        self.bar = None
    if preempt.is_set:
      saved = self.save(step, lambda: host_state(state), extra, force=True)
      self.close()
      where = (f"checkpoint of step {step} in {self.ckpt.directory}" if self.ckpt is not None
               else "no checkpoint (checkpoint.enabled=False)")
      raise Preempted(f"stopped by signal at step {step}/{total}; {where}"
                      f"{'' if saved else ' (already saved)'}; run the same command again "
                      "to resume.", preempt.signum)
    self.save(step, lambda: host_state(state), extra, force=True)
    self.close()
    return state, step, compile_s

  def close(self) -> None:
    if self.ckpt is not None:
      self.ckpt.close()

  def finish(self, step: int, summary: Dict[str, Any]) -> None:
    """Writes the 'final' metrics row and summary.json (process 0)."""
    summary.setdefault("seconds", time.time() - self.t_start)
    if self.main:
      self.writer.write(step, "final", {k: v for k, v in summary.items()
                                        if isinstance(v, (int, float)) and v is not None})
      write_json(self.path("summary.json"), summary)
      self.writer.close()
    sys.stdout.flush()
