"""The loop behind `jdarts train`: data, compiled step, evaluation, checkpoints, outputs.

`run(config, workdir)` trains `config.genotype`'s network from scratch
(paper sec. 3.2; configs/train_*.py) with the pieces of `jdarts.train`. It
writes to `workdir`:

* `config.json`       the resolved config;
* `genotype.json`     the cells trained (also for 'random:SEED' genotypes);
* `metrics.jsonl`     'train' rows every `log_every` steps, an 'epoch' row
  (train means, held-out accuracies) after each epoch, a 'final' row;
* `summary.json`      final accuracies, parameter count, timing;
* `checkpoints/<step>/` the whole `TrainState` (weights, BatchNorm running
  averages, optimiser state, step, RNG), the data position and the epoch's
  running sums (`jdarts.checkpoint`): every epoch (or
  `checkpoint.every_steps`), at the end, and on SIGTERM/SIGINT.

Running the same command again in the same workdir resumes from the latest
checkpoint and continues exactly as an uninterrupted run (same batches,
drop-path masks and learning rates): `max_steps=2` followed by `max_steps=4`
ends in the state, bit for bit, of one `max_steps=4` run. Held-out sets are
'valid' (with `data.valid_portion`), 'test' (`data.test_split`; CIFAR-10's
test split by default) and each of `data.extra_test_sets` (e.g. CIFAR-10.1).

With several processes (multi-host) every process trains on its rows of each
global batch; only process 0 writes logs and outputs, all of them write
their part of each checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict

import jax
import numpy as np

from jdarts import config_lib
from jdarts import search_loop
from jdarts import train as train_lib

log = logging.getLogger("jdarts")


def build_data(cfg, shard_index: int = 0, shard_count: int = 1):
  """The training stream and the held-out sources.

  Returns:
    (train_iter, info, eval_sources): eval_sources maps 'valid' (if
    `data.valid_portion` > 0), 'test' (if `data.test_split`) and every name in
    `data.extra_test_sets` to a source.

  Raises:
    ConfigError: an extra test set whose images or classes differ from the
      training data's.
  """
  from jdarts import data as data_lib
  from jdarts import train_config
  d = cfg.data
  info = data_lib.get_info(d.name)
  source = data_lib.load_source(d.name, "train", d.data_dir or None)
  eval_sources = {}
  if d.valid_portion > 0:
    source, eval_sources["valid"] = data_lib.search_split(source, 1.0 - d.valid_portion)
  if d.get("test_split"):
    eval_sources["test"] = data_lib.load_source(d.name, d.test_split, d.data_dir or None)
  for name in train_config.extra_test_sets(cfg):
    extra = data_lib.get_info(name)
    if (extra.image_shape, extra.num_classes) != (info.image_shape, info.num_classes):
      raise config_lib.ConfigError(
          f"data.extra_test_sets: {name} has {extra.image_shape} images of "
          f"{extra.num_classes} classes, {d.name} {info.image_shape} of {info.num_classes}.")
    eval_sources[name] = data_lib.load_source(name, "test", d.data_dir or None)
  train_it = data_lib.make_train_iterator(
      source, info, batch_size=cfg.batch_size, seed=cfg.seed, augment=d.augment,
      cutout=d.cutout, shard_index=shard_index, shard_count=shard_count,
      num_threads=d.get("num_threads", 0), worker_count=d.get("worker_count", 0))
  return train_it, info, eval_sources


def _devices(cfg):
  """(num local devices, global device count); ConfigError for impossible settings."""
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
  return num_devices, global_devices


def run(cfg, workdir: str) -> Dict[str, Any]:
  """Trains `cfg.genotype`'s network from scratch and writes its outputs to `workdir`.

  Args:
    cfg: a config from configs/train_*.py (see `jdarts.train_config`).
    workdir: output directory; created if absent. A checkpoint there is
      resumed.

  Returns:
    The summary: 'params', final 'train_accuracy' (mean over the last
    epoch), '<set>_accuracy' / '<set>_loss' for every held-out set, 'steps',
    'compile_seconds', 'seconds'.

  Raises:
    jdarts.train.NonFiniteLossError: a NaN/inf loss (names the step and the
      last good checkpoint).
    jdarts.search_loop.Preempted: stopped by SIGTERM/SIGINT after saving.
  """
  from jdarts import checkpoint as ckpt_lib
  from jdarts import data as data_lib
  from jdarts import genotypes, models, parallel, train_config
  train_config.validate(cfg)
  search_loop.prepare_workdir(workdir)
  search_loop.enable_compilation_cache(cfg.get("compilation_cache_dir", ""))
  main_process = jax.process_index() == 0
  t_start = time.time()
  genotype = genotypes.load_genotype(cfg.genotype)
  if main_process:
    search_loop.write_json(os.path.join(workdir, "config.json"),
                           json.loads(cfg.to_json_best_effort()))
    genotypes.save_genotype(genotype, os.path.join(workdir, "genotype.json"))

  train_it, info, eval_sources = build_data(cfg, jax.process_index(), jax.process_count())
  steps_per_epoch = train_it.steps_per_epoch
  total = cfg.epochs * steps_per_epoch
  if cfg.max_steps:
    total = min(total, cfg.max_steps)
  num_devices, global_devices = _devices(cfg)
  axis = parallel.AXIS if global_devices > 1 else None
  cross = bool(cfg.parallel.cross_replica_bn)
  model_cfg = cfg.model.to_dict()
  model_cfg["dtype"] = cfg.get("dtype", "float32")
  net = models.build_model(model_cfg, info.num_classes, genotype=genotype,
                           bn_axis_name=axis if cross else None)
  lr_fn = train_lib.learning_rate_schedule(cfg.optim, cfg.epochs, steps_per_epoch)
  tx = train_lib.optimizer(cfg.optim, lr_fn)
  dp_fn = train_lib.drop_path_schedule(cfg.model.drop_path_prob, cfg.epochs,
                                       steps_per_epoch, cfg.drop_path_schedule)
  state = train_lib.init_state(net, jax.random.PRNGKey(cfg.seed), info.image_shape, tx)
  n_params = models.count_params(state.params)
  step_fn = parallel.ParallelStep(
      train_lib.make_train_step(
          net, tx, lr_fn, dp_fn, auxiliary_weight=cfg.loss.auxiliary_weight,
          label_smoothing=cfg.loss.label_smoothing, axis_name=axis,
          sync_batch_stats=axis is not None and not cross),
      backend=cfg.parallel.backend if global_devices > 1 else "none",
      devices=None if jax.process_count() > 1 else jax.local_devices()[:num_devices],
      num_batches=1)

  # Per-epoch running sums and the latest evaluation travel in the checkpoint,
  # so a resumed run logs what an uninterrupted one would.
  loop = {"epoch_sums": {}, "epoch_n": 0, "train_means": {}, "last_eval": {}}
  ckpt = None
  if cfg.checkpoint.enabled:
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
      loop.update(extra.get("loop", {}))
      log.info("resuming from the checkpoint of step %d in %s", ckpt_step, ckpt.directory)
  start_step = int(state.step)
  state = step_fn.put_state(state)
  eval_step = jax.jit(train_lib.make_eval_step(models.without_axis_name(net)))
  eval_batch = cfg.eval_batch_size or cfg.batch_size

  log.info("train: %s network of %s on %s, %d steps (%d per epoch), %d params "
           "(%d with the auxiliary head), %s, %d device(s)", cfg.model.name, cfg.genotype,
           cfg.data.name, total, steps_per_epoch, n_params["params"],
           n_params["params_total"], model_cfg["dtype"], global_devices)
  writer = search_loop.MetricsWriter(workdir) if main_process else None
  bar = search_loop._progress(total, start_step,  # pylint: disable=protected-access
                              cfg.get("progress", True) and main_process)
  if bar is not None:
    bar.set_description("train")
  pending = []  # (step, device metrics) not yet fetched; fetched every log interval

  def flush():
    """Fetches pending metrics, adds them to the epoch sums; raises on NaN/inf."""
    nonlocal pending
    fetched = jax.device_get(pending)
    pending = []
    for s, m in fetched:
      if not np.isfinite(m["loss"]):
        good = ckpt.latest_step() if ckpt is not None else None
        where = (f"the last good checkpoint is step {good} in {ckpt.directory} (a rerun "
                 "resumes from it)" if good is not None else "no checkpoint was written")
        raise train_lib.NonFiniteLossError(
            f"loss became {m['loss']} at step {s}; {where}; lower optim.learning_rate.")
      for k, v in m.items():
        loop["epoch_sums"][k] = loop["epoch_sums"].get(k, 0.0) + float(v)
      loop["epoch_n"] += 1
    return fetched[-1][1] if fetched else None

  def save_checkpoint(step, state, force=False):
    if ckpt is None or not (force or ckpt.should_save(step)):
      return False
    flush()  # never checkpoint a state that came from a non-finite loss
    extra = {"train_iter": train_it.get_state(), "epoch": step / steps_per_epoch,
             "loop": loop}
    return ckpt.save(step, jax.device_get(step_fn.get_state(state)), extra, force=force)

  def run_eval(state):
    variables = jax.device_get(step_fn.get_state(state))
    variables = {"params": variables.params, "batch_stats": variables.batch_stats}
    res = {}
    for name, source in eval_sources.items():
      batches = data_lib.make_eval_iterator(source, info, batch_size=eval_batch)
      r = train_lib.evaluate(eval_step, variables, batches)
      res[f"{name}_accuracy"], res[f"{name}_loss"] = r["accuracy"], r["loss"]
    return res

  def say(msg):
    if main_process:
      (bar.write if bar is not None else print)(msg)

  def _loop(state, step):
    compile_s, t_window, images = None, time.time(), 0
    while step < total and not preempt.is_set:
      batch = next(train_it)
      t0 = time.time()
      state, metrics = step_fn(state, batch)
      step += 1
      pending.append((step, step_fn.get_metrics(metrics)))
      if compile_s is None:
        jax.block_until_ready(metrics)
        compile_s = time.time() - t0
        log.info("first step (compilation included) took %.1f s", compile_s)
        t_window, images = time.time(), 0
      else:
        images += cfg.batch_size
      epoch_end = step % steps_per_epoch == 0
      if step % cfg.log_every == 0 or epoch_end or step == total:
        last = flush()
        rate = images / max(time.time() - t_window, 1e-9)
        t_window, images = time.time(), 0
        if writer is not None:
          writer.write(step, "train", dict(last, images_per_sec=rate))
        if bar is not None:
          bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['accuracy']:.3f}",
                          img_s=f"{rate:.0f}", refresh=False)
      if bar is not None:
        bar.update(1)
      if epoch_end or step == total:
        epoch = -(-step // steps_per_epoch)
        n = max(loop["epoch_n"], 1)
        means = {f"train_{k}": v / n for k, v in loop["epoch_sums"].items()
                 if k in ("loss", "accuracy")}
        if epoch_end:  # a run stopped mid-epoch keeps the sums for its resumption
          loop["epoch_sums"], loop["epoch_n"] = {}, 0
        loop["train_means"] = means
        row = dict(means, epoch=epoch)
        if epoch % cfg.eval_every_epochs == 0 or step == total:
          loop["last_eval"] = run_eval(state)
          row.update(loop["last_eval"])
        if writer is not None:
          writer.write(step, "epoch", row)
        say(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                            if k != "epoch"))
      save_checkpoint(step, state)
    return state, step, compile_s

  preempt = ckpt_lib.PreemptionFlag().install()
  try:
    state, step, compile_seconds = _loop(state, start_step)
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
    raise search_loop.Preempted(
        f"stopped by signal at step {step}/{total}; {where}"
        f"{'' if saved else ' (already saved)'}; run the same command again to resume.",
        preempt.signum)
  save_checkpoint(step, state, force=True)
  if ckpt is not None:
    ckpt.close()
  if not loop["last_eval"] and eval_sources:  # e.g. resumed at the end of a run
    loop["last_eval"] = run_eval(state)
  summary = dict(loop["train_means"])
  summary.update(loop["last_eval"], steps=step, compile_seconds=compile_seconds,
                 seconds=time.time() - t_start, genotype=cfg.genotype,
                 dtype=model_cfg["dtype"], **n_params)
  if writer is not None:
    writer.write(step, "final", {k: v for k, v in summary.items()
                                 if isinstance(v, (int, float)) and v is not None})
    search_loop.write_json(os.path.join(workdir, "summary.json"), summary)
  if main_process:
    print("final: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in summary.items()
                              if k.endswith("accuracy")))
  return summary
