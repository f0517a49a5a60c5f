"""The search loop: data, compiled step, progress, and the run's outputs.

`run(config, workdir)` is what `jdarts search` calls. It writes to `workdir`:

* `config.json`      the resolved config;
* `metrics.jsonl`    one JSON object per log interval / epoch / final evaluation;
* `genotype.json`    the derived genotype, rewritten every epoch and at the end;
* `alphas.json`      every alpha array as nested lists, keyed by name;
* `summary.json`     final search-val (and test) accuracy of the supernet;
* `hypergrad_probe.jsonl` with `hypergrad_probe_every > 0`: every estimator
  of `hypergrad.methods` against `hypergrad.reference` on the state and batches
  of every N-th step (`jdarts.hypergrad_report.Probe`);
* `checkpoints/<step>/` the whole search state and the data position
  (`jdarts.checkpoint`), every epoch (or `checkpoint.every_steps`), at the
  end, and on SIGTERM/SIGINT.

Running the same command again in the same workdir resumes from the latest
checkpoint and continues exactly as if never stopped (same batches, same RNG,
same optimiser states), whatever `max_steps` says: `max_steps=2` followed by
`max_steps=4` ends where one `max_steps=4` run ends.

With several processes (multi-host, `jdarts.parallel.maybe_initialize_distributed`)
every process runs this loop on its rows of each global batch; only process 0
writes logs and outputs; all of them write their part of the checkpoints.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdarts import config_lib
from jdarts import search as search_lib
from jdarts import spaces

log = logging.getLogger("jdarts")


class NonFiniteLossError(FloatingPointError):
  """Raised when a search step produces a NaN or infinite loss."""


class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint."""

  def __init__(self, msg: str, signum: Optional[int]):
    super().__init__(msg)
    self.signum = signum


def _is_main_process() -> bool:
  return jax.process_index() == 0


def _to_jsonable(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), tree)


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (temp file + rename), so readers never see half a file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed; a path that exists but is not a directory is an error."""
  if not workdir:
    raise config_lib.ConfigError("--workdir is required, e.g. --workdir=runs/quickstart.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"--workdir={workdir} exists and is not a directory; "
                                 "choose another path.")
  os.makedirs(workdir, exist_ok=True)
  return workdir


def enable_compilation_cache(path: str) -> None:
  """Persists compiled XLA programs, so a repeated or resumed run skips compiling."""
  if not path:
    return
  path = os.path.expanduser(path)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build_data(cfg, shard_index: int = 0, shard_count: int = 1):
  """The search-train and search-val streams and the held-out test source.

  Returns:
    (train_iter, val_iter, info, eval_sources) where eval_sources maps a name
    ('search_val', and 'test' when `data.test_split` is set) to a source.
  """
  from jdarts import data as data_lib
  d = cfg.data
  info = data_lib.get_info(d.name)
  source = data_lib.load_source(d.name, "train", d.data_dir or None)
  s_train, s_val = data_lib.search_split(source, d.train_portion)
  common = dict(batch_size=cfg.batch_size, augment=d.augment, cutout=d.cutout,
                shard_index=shard_index, shard_count=shard_count)
  # Different seeds for the two halves, so their shuffles are not paired.
  train_it = data_lib.make_train_iterator(s_train, info, seed=2 * cfg.seed, **common)
  val_it = data_lib.make_train_iterator(s_val, info, seed=2 * cfg.seed + 1, **common)
  eval_sources = {"search_val": s_val}
  if d.get("test_split"):
    eval_sources["test"] = data_lib.load_source(d.name, d.test_split, d.data_dir or None)
  return train_it, val_it, info, eval_sources


def build_space(cfg, info, bn_axis_name: Optional[str] = None):
  """The search space of `cfg.space`, with the dataset's number of classes."""
  model_cfg = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
  model_cfg["num_classes"] = info.num_classes
  model_cfg["bn_axis_name"] = bn_axis_name
  return spaces.get_space(cfg.space, model_cfg)


def search_epoch_steps(cfg, train_it, val_it, eval_sources) -> int:
  """Search steps per epoch: one batch of each split per step, so the shorter one.

  Raises:
    ConfigError: a batch is larger than a search split.
  """
  n = min(train_it.steps_per_epoch, val_it.steps_per_epoch)
  if n == 0:
    raise config_lib.ConfigError(
        f"batch_size={cfg.batch_size} is larger than a search split "
        f"({len(eval_sources['search_val'])} examples); lower --config.batch_size.")
  return n


def init_search(cfg, space, info, steps_per_epoch: int):
  """The optimisers and the initial search state of a config.

  Returns:
    (schedule, w_opt, a_opt, state): the weight learning-rate schedule, the
    weight and architecture optax optimisers, and an unreplicated
    `SearchState` initialised on a zero batch of (batch_size, H, W, C) images.
  """
  schedule = search_lib.weight_schedule(cfg.optim, cfg.epochs, steps_per_epoch)
  w_opt = search_lib.weight_optimizer(cfg.optim, schedule)
  a_opt = search_lib.arch_optimizer(cfg.arch)
  H, W, C = info.image_shape
  sample = {"image": jnp.zeros((cfg.batch_size, H, W, C), jnp.float32),
            "label": jnp.zeros((cfg.batch_size,), jnp.int32)}
  state = search_lib.init_state(space, jax.random.PRNGKey(cfg.seed), sample, w_opt, a_opt)
  return schedule, w_opt, a_opt, state


def save_outputs(workdir: str, space, alphas) -> Any:
  """Writes genotype.json and alphas.json for `alphas`; returns the genotype."""
  alphas = jax.device_get(alphas)
  genotype = space.derive(alphas)
  write_json(os.path.join(workdir, "genotype.json"), space.genotype_json(genotype))
  write_json(os.path.join(workdir, "alphas.json"), _to_jsonable(alphas))
  return genotype


def trim_jsonl(path: str, keep) -> int:
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
    row.update({k: float(v) if np.ndim(v) == 0 else _to_jsonable(v)
                for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def _progress(total, initial, enabled):
  if not enabled:
    return None
  try:
    from tqdm import auto as tqdm
  except ImportError:  # tqdm is a dependency, but keep the loop usable without it
    return None
  return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                   desc="search")


def run(cfg, workdir: str) -> Dict[str, Any]:
  """Runs an architecture search as configured and writes its outputs to `workdir`.

  Args:
    cfg: a config from `configs/*.py` (see `jdarts.config_lib.validate`).
    workdir: output directory; created if absent.

  Returns:
    A summary dict: 'genotype' (JSON form), 'search_val_accuracy',
    optionally 'test_accuracy', 'steps', 'compile_seconds', 'seconds'.
  """
  config_lib.validate(cfg)
  if cfg.get("hypergrad_probe_every", 0):
    from jdarts import hypergrad_report
    hypergrad_report.validate(cfg)  # before any work, not at the first probe
  prepare_workdir(workdir)
  enable_compilation_cache(cfg.get("compilation_cache_dir", ""))
  main_process = _is_main_process()
  if main_process:
    write_json(os.path.join(workdir, "config.json"), json.loads(cfg.to_json_best_effort()))
  t_start = time.time()

  train_it, val_it, info, eval_sources = build_data(
      cfg, shard_index=jax.process_index(), shard_count=jax.process_count())
  steps_per_epoch = search_epoch_steps(cfg, train_it, val_it, eval_sources)
  total = cfg.epochs * steps_per_epoch
  if cfg.max_steps:
    total = min(total, cfg.max_steps)
  from jdarts import parallel
  num_devices = cfg.parallel.num_devices or jax.local_device_count()
  if num_devices > jax.local_device_count():
    raise config_lib.ConfigError(
        f"parallel.num_devices={num_devices} but only {jax.local_device_count()} local "
        "devices exist; lower it or use 0 for all.")
  if jax.process_count() > 1 and num_devices != jax.local_device_count():
    raise config_lib.ConfigError(
        "with several processes every device takes part; use "
        "--config.parallel.num_devices=0.")
  global_devices = num_devices * jax.process_count()
  try:
    parallel.check_divisible(cfg.batch_size, global_devices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  axis = parallel.AXIS if global_devices > 1 else None
  space = build_space(cfg, info, bn_axis_name=axis if cfg.parallel.cross_replica_bn else None)
  schedule, w_opt, a_opt, state = init_search(cfg, space, info, steps_per_epoch)
  step_fn = parallel.ParallelStep(
      search_lib.make_search_step(space, cfg.arch, w_opt, a_opt, schedule, axis_name=axis,
                                  fuse_first_order=cfg.arch.get("fuse_first_order", False)),
      backend=cfg.parallel.backend if global_devices > 1 else "none",
      devices=None if jax.process_count() > 1 else jax.local_devices()[:num_devices])

  ckpt = None
  if cfg.checkpoint.enabled:
    from jdarts import checkpoint as ckpt_lib
    ckpt = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=cfg.checkpoint.keep,
        save_every_steps=cfg.checkpoint.every_steps or steps_per_epoch,
        async_save=cfg.checkpoint.async_save)
    # Host (numpy) values: one copy, written by the primary process; device
    # arrays local to each process cannot be saved under multi-host.
    restored = ckpt.restore_latest(jax.device_get(state))
    if restored is not None:
      state, extra, ckpt_step = restored
      train_it.set_state(extra["train_iter"])
      val_it.set_state(extra["val_iter"])
      log.info("resuming from the checkpoint of step %d in %s", ckpt_step, ckpt.directory)
  start_step = int(state.step)
  state = step_fn.put_state(state)
  probe_path = os.path.join(workdir, "hypergrad_probe.jsonl")
  if main_process:
    # Rows after the checkpoint (or of an earlier run, when starting at 0) belong
    # to steps this run replays.
    trim_jsonl(os.path.join(workdir, "metrics.jsonl"),
               lambda r: r.get("kind") != "final" and r.get("step", 0) <= start_step)
    trim_jsonl(probe_path, lambda r: r.get("step", 0) < start_step)

  def save_checkpoint(step, state, force=False):
    if ckpt is None or not (force or ckpt.should_save(step)):
      return False
    flush(step)  # never checkpoint a state that came from a non-finite loss
    extra = {"train_iter": train_it.get_state(), "val_iter": val_it.get_state(),
             "epoch": step / steps_per_epoch}
    return ckpt.save(step, jax.device_get(step_fn.get_state(state)), extra, force=force)
  # Held-out evaluation runs on one device, with batch statistics of its batch.
  eval_space = build_space(cfg, info)
  eval_step = jax.jit(search_lib.make_eval_step(eval_space))

  log.info("search: %s on %s, %d steps (%d per epoch), arch method %s, %d weights, "
           "%d device(s) (%s)", cfg.space, cfg.data.name, total, steps_per_epoch,
           cfg.arch.method, sum(x.size for x in jax.tree_util.tree_leaves(
               step_fn.get_state(state).params)), global_devices, step_fn.backend)
  writer = MetricsWriter(workdir) if main_process else None
  probe = None
  if cfg.get("hypergrad_probe_every", 0) and main_process:
    from jdarts import hypergrad_report
    probe = hypergrad_report.Probe(cfg, eval_space, w_opt, schedule, probe_path)
  bar = _progress(total, start_step, cfg.get("progress", True) and main_process)
  pending = []  # device metrics not yet fetched; fetched every log interval
  compile_seconds = None
  t_window, images = time.time(), 0
  step = start_step

  def flush(step):
    nonlocal pending
    fetched = jax.device_get(pending)
    for s, m in fetched:
      if not (np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"])):
        good = ckpt.latest_step() if ckpt is not None else None
        where = (f"the last good checkpoint is step {good} in {ckpt.directory} (a rerun "
                 "resumes from it)" if good is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"loss became {m['train_loss']} (train) / {m['val_loss']} (val) at step {s}; "
            f"{where}; lower optim.learning_rate or arch.learning_rate.")
    pending = []
    return fetched[-1][1] if fetched else None

  def _loop():
    nonlocal t_window, images
    state_, step_, compile_s = state, step, None
    while step_ < total and not preempt.is_set:
      train_batch, val_batch = next(train_it), next(val_it)
      if probe is not None and probe.due(step_):
        t_probe = time.time()
        rows = probe(step_, step_fn.get_state(state_), train_batch, val_batch)
        (bar.write if bar is not None else print)(probe.format(step_, rows))
        t_window += time.time() - t_probe  # keep images/s a rate of search steps
      t0 = time.time()
      state_, metrics = step_fn(state_, train_batch, val_batch)
      metrics = step_fn.get_metrics(metrics)
      step_ += 1
      pending.append((step_, metrics))
      if compile_s is None:
        jax.block_until_ready(metrics)
        compile_s = time.time() - t0
        log.info("first step (compilation included) took %.1f s", compile_s)
        t_window, images = time.time(), 0
      else:
        images += 2 * cfg.batch_size
      if step_ % cfg.log_every == 0 or step_ == total or step_ % steps_per_epoch == 0:
        last = flush(step_)
        rate = images / max(time.time() - t_window, 1e-9)
        t_window, images = time.time(), 0
        if writer is not None:
          writer.write(step_, "train", dict(last, images_per_sec=rate))
        if bar is not None:
          bar.set_postfix(loss=f"{last['train_loss']:.3f}",
                          acc=f"{last['train_accuracy']:.3f}",
                          val_acc=f"{last['val_accuracy']:.3f}", img_s=f"{rate:.0f}",
                          refresh=False)
      if bar is not None:
        bar.update(1)
      if step_ % steps_per_epoch == 0 or step_ == total:
        alphas = step_fn.get_state(state_).alphas
        genotype = space.derive(jax.device_get(alphas))
        if main_process:
          save_outputs(workdir, space, alphas)
          msg = (f"epoch {step_ / steps_per_epoch:.2f} genotype: "
                 f"{space.format_genotype(genotype)}")
          (bar.write if bar is not None else print)(msg)
      save_checkpoint(step_, state_)
    return state_, step_, compile_s

  from jdarts import checkpoint as ckpt_lib
  preempt = ckpt_lib.PreemptionFlag().install()
  try:
    state, step, compile_seconds = _loop()
  finally:
    preempt.uninstall()
    if bar is not None:
      bar.close()
  if preempt.is_set:
    saved = save_checkpoint(step, state, force=True)
    if ckpt is not None:
      ckpt.close()
    where = (f"checkpoint of step {step} in {ckpt.directory}" if ckpt is not None
             else "no checkpoint (checkpoint.enabled=False)")
    raise Preempted(f"stopped by signal at step {step}/{total}; {where}"
                    f"{'' if saved else ' (already saved)'}; run the same command again "
                    "to resume.", preempt.signum)

  # The final state is saved before the (possibly long) held-out evaluation.
  save_checkpoint(step, state, force=True)
  if ckpt is not None:
    ckpt.close()
  state = step_fn.get_state(state)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    # Every process must end with the same architecture; fails loudly if not.
    multihost_utils.assert_equal(jax.device_get(state.alphas),
                                 "the processes disagree on the alphas")
  summary = {"steps": step, "compile_seconds": compile_seconds}
  genotype = space.derive(jax.device_get(state.alphas))
  summary["genotype"] = space.genotype_json(genotype)
  if main_process:
    save_outputs(workdir, space, state.alphas)
  from jdarts import data as data_lib
  for name, source in eval_sources.items():
    batches = data_lib.make_eval_iterator(source, info, batch_size=cfg.batch_size)
    res = search_lib.evaluate(eval_step, state.params, state.alphas, batches)
    summary[f"{name}_accuracy"] = res["accuracy"]
    summary[f"{name}_loss"] = res["loss"]
    if main_process:
      print(f"supernet {name} accuracy: {100 * res['accuracy']:.2f}% "
            f"(loss {res['loss']:.4f}, {int(res['count'])} held-out images)")
  summary["seconds"] = time.time() - t_start
  if main_process:
    writer.write(step, "final", {k: v for k, v in summary.items()
                                 if isinstance(v, (int, float)) and v is not None})
    write_json(os.path.join(workdir, "summary.json"), summary)
    print(f"genotype written to {os.path.join(workdir, 'genotype.json')}: "
          f"{space.format_genotype(genotype)}")
  return summary

