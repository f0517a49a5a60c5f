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

import dataclasses
import logging
from typing import Any, Dict

import jax
import numpy as np

from jdarts import config_lib
from jdarts import data as data_lib
from jdarts import genotypes
from jdarts.data import autoaugment
from jdarts import models
from jdarts import optim
from jdarts import parallel
from jdarts import runs
from jdarts import schedules
from jdarts import train as train_lib
from jdarts import train_config

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
  d = cfg.data
  info = data_lib.get_info(d.name)
  if d.get("autoaugment", False):
    # sharp_darts.txt Table 2: the CIFAR-10 AutoAugment policy after crop and flip.
    if info.train_transform is not None:
      raise config_lib.ConfigError(
          f"data.autoaugment=True is for datasets cropped and flipped by the pipeline "
          f"(cifar10, digits); {d.name} has its own training transform.")
    info = dataclasses.replace(info, train_transform=autoaugment.AutoAugmentTransform(
        info.crop_padding, info.flip))
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
    jdarts.runs.NonFiniteLossError: a NaN/inf loss (names the step and the
      last good checkpoint).
    jdarts.runs.Preempted: stopped by SIGTERM/SIGINT after saving.
  """
  train_config.validate(cfg)
  r = runs.Run(cfg, workdir, "train", finite_keys=("loss",),
               nan_hint="lower optim.learning_rate.")
  genotype = models.load_genotype(cfg.model.name, cfg.genotype)
  if r.main and cfg.model.name in models.GENOTYPE_JSON:
    runs.write_json(r.path("genotype.json"), models.GENOTYPE_JSON[cfg.model.name](genotype))
  elif r.main:
    genotypes.save_genotype(genotype, r.path("genotype.json"))

  train_it, info, eval_sources = build_data(cfg, jax.process_index(), jax.process_count())
  spe = train_it.steps_per_epoch
  total = r.total_steps(spe)
  num_devices, global_devices = r.devices()
  axis = parallel.AXIS if global_devices > 1 else None
  cross = bool(cfg.parallel.cross_replica_bn)
  model_cfg = cfg.model.to_dict()
  model_cfg["dtype"] = cfg.get("dtype", "float32")
  net = models.build_model(model_cfg, info.num_classes, genotype=genotype,
                           bn_axis_name=axis if cross else None)
  lr_fn = schedules.make_schedule(cfg.optim, cfg.epochs, spe)
  tx = optim.weight_optimizer(cfg.optim, lr_fn)
  dp_fn = train_lib.drop_path_schedule(cfg.model.drop_path_prob, cfg.epochs, spe,
                                       cfg.drop_path_schedule)
  state = train_lib.init_state(net, jax.random.PRNGKey(cfg.seed), info.image_shape, tx)
  n_params = models.count_params(state.params)
  step_fn = r.parallel_step(
      train_lib.make_train_step(
          net, tx, lr_fn, dp_fn, auxiliary_weight=cfg.loss.auxiliary_weight,
          label_smoothing=cfg.loss.label_smoothing, axis_name=axis,
          sync_batch_stats=axis is not None and not cross),
      num_devices, global_devices, num_batches=1)

  # Per-epoch running sums and the latest evaluation travel in the checkpoint,
  # so a resumed run logs what an uninterrupted one would.
  loop = {"epoch_sums": {}, "epoch_n": 0, "train_means": {}, "last_eval": {}}
  # Host (numpy) values: one copy, written by the primary process; device
  # arrays local to each process cannot be saved under multi-host.
  restored = r.open_checkpoints(spe, jax.device_get(state))
  if restored is not None:
    state, extra, _ = restored
    train_it.set_state(extra["train_iter"])
    loop.update(extra.get("loop", {}))
  start = int(state.step)
  if r.main:
    # Rows after the checkpoint (or of an earlier run, when starting at 0) belong
    # to steps this run replays; without this a killed run logs them twice.
    runs.trim_jsonl(r.path("metrics.jsonl"),
                    lambda row: row.get("kind") != "final" and row.get("step", 0) <= start)
  state = step_fn.put_state(state)
  eval_step = parallel.jit(train_lib.make_eval_step(models.without_axis_name(net)))
  eval_batch = cfg.eval_batch_size or cfg.batch_size
  log.info("train: %s network of %s on %s, %d steps (%d per epoch), %d params "
           "(%d with the auxiliary head), %s, %d device(s)", cfg.model.name, cfg.genotype,
           cfg.data.name, total, spe, n_params["params"], n_params["params_total"],
           model_cfg["dtype"], global_devices)

  def run_eval(state):
    variables = jax.device_get(step_fn.get_state(state))
    variables = {"params": variables.params, "batch_stats": variables.batch_stats}
    res = {}
    for name, source in eval_sources.items():
      batches = data_lib.make_eval_iterator(source, info, batch_size=eval_batch)
      out = train_lib.evaluate(eval_step, variables, batches)
      res[f"{name}_accuracy"], res[f"{name}_loss"] = out["accuracy"], out["loss"]
    return res

  def advance(state, step):
    state, metrics = step_fn(state, next(train_it))
    return state, step_fn.get_metrics(metrics)

  def on_log(step, last, rate):
    if r.bar is not None:
      r.bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['accuracy']:.3f}",
                        img_s=f"{rate:.0f}", refresh=False)

  def add_to_epoch(fetched):
    # The epoch's running means are over every step, not only the logged ones.
    for _, m in fetched:
      for k, v in m.items():
        loop["epoch_sums"][k] = loop["epoch_sums"].get(k, 0.0) + float(v)
      loop["epoch_n"] += 1

  def on_step(step, state):
    epoch_end = step % spe == 0
    if not (epoch_end or step == total):
      return
    epoch = -(-step // spe)
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
    if r.writer is not None:
      r.writer.write(step, "epoch", row)
    r.say(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                        if k != "epoch"))

  state, step, compile_seconds = r.steps(
      state, start, total, advance, items_per_step=cfg.batch_size, steps_per_epoch=spe,
      host_state=lambda s: jax.device_get(step_fn.get_state(s)),
      extra=lambda step: {"train_iter": train_it.get_state(), "epoch": step / spe,
                          "loop": loop},
      on_log=on_log, on_step=on_step, on_fetch=add_to_epoch)
  if not loop["last_eval"] and eval_sources:  # e.g. resumed at the end of a run
    loop["last_eval"] = run_eval(state)
  summary = dict(loop["train_means"])
  summary.update(loop["last_eval"], steps=step, compile_seconds=compile_seconds,
                 genotype=cfg.genotype, dtype=model_cfg["dtype"], **n_params)
  r.finish(step, summary)
  if r.main:
    print("final: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in summary.items()
                              if k.endswith("accuracy")))
  return summary
