"""The search loop: data, compiled step, progress, and the run's outputs.

`run(config, workdir)` is what `jdarts search` calls. It writes to `workdir`:

* `config.json`      the resolved config;
* `metrics.jsonl`    one JSON object per log interval / epoch / final evaluation;
* `genotype.json`    the derived genotype, rewritten every epoch and at the end;
* `alphas.json`      every alpha array as nested lists, keyed by name;
* `summary.json`     final search-val (and test) accuracy of the supernet.
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


def build_space(cfg, info):
  """The search space of `cfg.space`, with the dataset's number of classes."""
  model_cfg = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
  model_cfg["num_classes"] = info.num_classes
  return spaces.get_space(cfg.space, model_cfg)


def save_outputs(workdir: str, space, alphas) -> Any:
  """Writes genotype.json and alphas.json for `alphas`; returns the genotype."""
  alphas = jax.device_get(alphas)
  genotype = space.derive(alphas)
  write_json(os.path.join(workdir, "genotype.json"), space.genotype_json(genotype))
  write_json(os.path.join(workdir, "alphas.json"), _to_jsonable(alphas))
  return genotype


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
  prepare_workdir(workdir)
  enable_compilation_cache(cfg.get("compilation_cache_dir", ""))
  write_json(os.path.join(workdir, "config.json"), json.loads(cfg.to_json_best_effort()))
  t_start = time.time()

  train_it, val_it, info, eval_sources = build_data(cfg)
  steps_per_epoch = min(train_it.steps_per_epoch, val_it.steps_per_epoch)
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(
        f"batch_size={cfg.batch_size} is larger than a search split "
        f"({len(eval_sources['search_val'])} examples); lower --config.batch_size.")
  total = cfg.epochs * steps_per_epoch
  if cfg.max_steps:
    total = min(total, cfg.max_steps)
  space = build_space(cfg, info)

  schedule = search_lib.weight_schedule(cfg.optim, cfg.epochs, steps_per_epoch)
  w_opt = search_lib.weight_optimizer(cfg.optim, schedule)
  a_opt = search_lib.arch_optimizer(cfg.arch)
  H, W, C = info.image_shape
  sample = {"image": jnp.zeros((cfg.batch_size, H, W, C), jnp.float32),
            "label": jnp.zeros((cfg.batch_size,), jnp.int32)}
  state = search_lib.init_state(space, jax.random.PRNGKey(cfg.seed), sample, w_opt, a_opt)
  step_fn = jax.jit(search_lib.make_search_step(
      space, cfg.arch, w_opt, a_opt, schedule,
      fuse_first_order=cfg.arch.get("fuse_first_order", True)), donate_argnums=0)
  eval_step = jax.jit(search_lib.make_eval_step(space))

  log.info("search: %s on %s, %d steps (%d per epoch), arch method %s, %d weights",
           cfg.space, cfg.data.name, total, steps_per_epoch, cfg.arch.method,
           sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
  writer = MetricsWriter(workdir)
  bar = _progress(total, int(state.step), cfg.get("progress", True))
  pending = []  # device metrics not yet fetched; fetched every log interval
  compile_seconds = None
  t_window, images = time.time(), 0
  step = int(state.step)

  def flush(step):
    nonlocal pending
    fetched = jax.device_get(pending)
    for s, m in fetched:
      if not (np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"])):
        raise NonFiniteLossError(
            f"Loss became {m['train_loss']} (train) / {m['val_loss']} (val) at step {s}; "
            "lower optim.learning_rate or arch.learning_rate. No checkpoint was written "
            "after this step.")
    pending = []
    return fetched[-1][1] if fetched else None

  while step < total:
    train_batch, val_batch = next(train_it), next(val_it)
    t0 = time.time()
    state, metrics = step_fn(state, train_batch, val_batch)
    step += 1
    pending.append((step, metrics))
    if compile_seconds is None:
      jax.block_until_ready(metrics)
      compile_seconds = time.time() - t0
      log.info("first step (compilation included) took %.1f s", compile_seconds)
      t_window, images = time.time(), 0
    else:
      images += 2 * cfg.batch_size
    if step % cfg.log_every == 0 or step == total or step % steps_per_epoch == 0:
      last = flush(step)
      rate = images / max(time.time() - t_window, 1e-9)
      t_window, images = time.time(), 0
      writer.write(step, "train", dict(last, images_per_sec=rate))
      if bar is not None:
        bar.set_postfix(loss=f"{last['train_loss']:.3f}", acc=f"{last['train_accuracy']:.3f}",
                        val_acc=f"{last['val_accuracy']:.3f}", img_s=f"{rate:.0f}",
                        refresh=False)
    if bar is not None:
      bar.update(1)
    if step % steps_per_epoch == 0 or step == total:
      genotype = save_outputs(workdir, space, state.alphas)
      msg = f"epoch {step / steps_per_epoch:.2f} genotype: {space.format_genotype(genotype)}"
      (bar.write if bar is not None else print)(msg)
  if bar is not None:
    bar.close()

  genotype = save_outputs(workdir, space, state.alphas)
  summary = {"genotype": space.genotype_json(genotype), "steps": step,
             "compile_seconds": compile_seconds}
  from jdarts import data as data_lib
  for name, source in eval_sources.items():
    batches = data_lib.make_eval_iterator(source, info, batch_size=cfg.batch_size)
    res = search_lib.evaluate(eval_step, state.params, state.alphas, batches)
    summary[f"{name}_accuracy"] = res["accuracy"]
    summary[f"{name}_loss"] = res["loss"]
    print(f"supernet {name} accuracy: {100 * res['accuracy']:.2f}% "
          f"(loss {res['loss']:.4f}, {int(res['count'])} held-out images)")
  summary["seconds"] = time.time() - t_start
  writer.write(step, "final", {k: v for k, v in summary.items()
                               if isinstance(v, (int, float)) and v is not None})
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(f"genotype written to {os.path.join(workdir, 'genotype.json')}: "
        f"{space.format_genotype(genotype)}")
  return summary
