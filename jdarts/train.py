"""Training a genotype's network from scratch: the evaluation of paper sec. 3.2.

`run(config, workdir)` is what `jdarts train` calls (configs/train_*.py). The
pieces are importable on their own:

* `classification_loss`: cross-entropy of the main logits plus
  `auxiliary_weight` times that of the auxiliary logits (paper A.2.1: 0.4),
  with optional label smoothing (ImageNet, reference `CrossEntropyLabelSmooth`);
* `TrainState`: weights, BatchNorm running averages, optimiser state, step, RNG;
* `make_train_step`: the pure per-device step `(state, batch) -> (state, metrics)`,
  run by `jdarts.parallel.ParallelStep` under pmap / shard_map / jit exactly as
  the search step; gradients and metrics are averaged over the device axis,
  BatchNorm moments too when `parallel.cross_replica_bn` (else the running
  averages are averaged after each step, so replicas stay identical);
* `make_eval_step` / `evaluate`: masked sums over a held-out source with the
  running averages (inference mode: no drop-path, no auxiliary head).

Drop-path follows the reference: probability `drop_path_prob * epoch / epochs`
during epoch `epoch` (`drop_path_schedule='linear'`). Its random numbers are
`fold_in(fold_in(rng, step), device)`, so a run is reproducible.

Outputs in `workdir`: config.json, genotype.json (the cells trained),
metrics.jsonl (train rows every `log_every` steps, an 'epoch' row with
train/valid/test accuracy after each evaluation), summary.json (final
accuracies, parameter count, timing). No checkpoints yet: a stopped run
starts over.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdarts import schedules
from jdarts.spaces.darts_cnn import cross_entropy

log = logging.getLogger("jdarts")
PyTree = Any


class NonFiniteLossError(FloatingPointError):
  """Raised when a training step produces a NaN or infinite loss."""


def classification_loss(logits, logits_aux, labels, *, auxiliary_weight: float = 0.4,
                        label_smoothing: float = 0.0, mask=None):
  """Main plus weighted auxiliary cross-entropy (reference train.py).

  Args:
    logits: (N, K) main logits.
    logits_aux: (N, K) auxiliary logits, or None (no auxiliary term).
    labels: (N,) int labels.
    auxiliary_weight: weight of the auxiliary term.
    label_smoothing: epsilon of (1 - eps) * onehot + eps / K targets, for both terms.
    mask: (N,) 1 for real rows, 0 for padding; None: all real.

  Returns:
    (loss, metrics): loss = main + auxiliary_weight * aux; metrics has
    'loss' (the total), 'main_loss', 'aux_loss' (0 without aux logits),
    'accuracy' (of the main logits) and 'count'.
  """
  main, m = cross_entropy(logits, labels, mask, label_smoothing)
  aux = jnp.zeros((), main.dtype)
  if logits_aux is not None:
    aux, _ = cross_entropy(logits_aux, labels, mask, label_smoothing)
  loss = main + auxiliary_weight * aux
  return loss, {"loss": loss, "main_loss": main, "aux_loss": aux,
                "accuracy": m["accuracy"], "count": m["count"]}


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, completed steps.
    params: network weights.
    batch_stats: BatchNorm running averages.
    opt_state: optimiser state.
    rng: PRNG key; the step's key is fold_in(rng, step).
  """
  step: jnp.ndarray
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jnp.ndarray


def learning_rate_schedule(optim_cfg, epochs: int, steps_per_epoch: int) -> Callable:
  """The configured schedule: cosine_by_epoch (CIFAR, A.1.1), exponential_by_epoch
  (ImageNet, A.2.3: lr * 0.97 ** epoch), cosine (per step) or constant."""
  name = optim_cfg.schedule
  lr = optim_cfg.learning_rate
  if name == "cosine_by_epoch":
    return schedules.cosine_by_epoch(lr, optim_cfg.learning_rate_min, epochs, steps_per_epoch)
  if name == "cosine":
    return schedules.cosine(lr, optim_cfg.learning_rate_min, epochs * steps_per_epoch)
  if name == "exponential_by_epoch":
    return schedules.exponential_by_epoch(lr, optim_cfg.lr_decay, steps_per_epoch)
  if name == "constant":
    return lambda step: jnp.asarray(lr, jnp.float32)
  raise ValueError(f"Unknown optim.schedule {name!r}.")


def optimizer(optim_cfg, schedule) -> optax.GradientTransformation:
  """Clip the global gradient norm, add coupled weight decay, momentum SGD.

  The reference's order: `clip_grad_norm_` on the raw gradient, then
  `torch.optim.SGD(momentum, weight_decay)` (decay added to the clipped
  gradient before the momentum buffer).
  """
  parts = []
  if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  if optim_cfg.weight_decay:
    parts.append(optax.add_decayed_weights(optim_cfg.weight_decay))
  parts.append(optax.sgd(schedule, momentum=optim_cfg.momentum or None))
  return optax.chain(*parts)


def drop_path_schedule(drop_path_prob: float, epochs: int, steps_per_epoch: int,
                       kind: str = "linear") -> Callable:
  """step -> drop-path probability: p * epoch / epochs ('linear', reference) or p."""
  if kind == "constant":
    return lambda step: jnp.asarray(drop_path_prob, jnp.float32)

  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    return jnp.asarray(drop_path_prob, jnp.float32) * epoch / epochs
  return schedule


def init_state(net, rng, image_shape, tx: optax.GradientTransformation) -> TrainState:
  """Fresh weights (PyTorch's default initialisation) and optimiser state."""
  from jdarts import models
  k_init, k_run = jax.random.split(rng)
  variables = models.init_variables(net, k_init, image_shape)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=k_run)


def _pmean(tree, axis_name):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def make_train_step(net, tx: optax.GradientTransformation, lr_schedule: Callable,
                    drop_path_fn: Callable, *, auxiliary_weight: float = 0.4,
                    label_smoothing: float = 0.0, axis_name: Optional[str] = None,
                    sync_batch_stats: bool = False) -> Callable:
  """Builds the per-device step `(state, batch) -> (state, metrics)`.

  Args:
    net: an evaluation network (`jdarts.models`), built with
      `bn_axis_name=axis_name` for cross-replica BatchNorm statistics.
    tx: the weights' optimiser.
    lr_schedule: step -> learning rate (reported only; `tx` applies it).
    drop_path_fn: step -> drop-path probability (traced; no recompiles).
    auxiliary_weight, label_smoothing: see `classification_loss`.
    axis_name: device axis to average gradients and metrics over; None on one device.
    sync_batch_stats: average the running BatchNorm averages over `axis_name`
      after the step (needed when BN moments are per device).

  Returns:
    The step; metrics are float32 scalars: loss, main_loss, aux_loss,
    accuracy, lr, grad_norm, drop_path_prob.
  """
  def step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    p = drop_path_fn(state.step)

    def loss_fn(params):
      (logits, logits_aux), updates = net.apply(
          {"params": params, "batch_stats": state.batch_stats}, batch["image"],
          train=True, drop_path_prob=p, rngs={"dropout": rng}, mutable=["batch_stats"])
      loss, metrics = classification_loss(
          logits, logits_aux, batch["label"], auxiliary_weight=auxiliary_weight,
          label_smoothing=label_smoothing, mask=batch.get("mask"))
      return loss, (metrics, updates["batch_stats"])

    (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = _pmean(grads, axis_name)
    metrics = _pmean({k: v for k, v in metrics.items() if k != "count"}, axis_name)
    if sync_batch_stats:
      batch_stats = _pmean(batch_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(lr=jnp.asarray(lr_schedule(state.step), jnp.float32),
                   grad_norm=optax.tree.norm(grads),
                   drop_path_prob=jnp.asarray(p, jnp.float32))
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                        opt_state=opt_state)
    return new, metrics
  return step


def make_eval_step(net, *, axis_name: Optional[str] = None) -> Callable:
  """`(variables, batch) -> {'loss_sum', 'correct', 'count'}` in inference mode.

  Plain cross-entropy of the main logits (the reference's `infer`), masked
  sums so padded final batches count every example once.
  """
  def step(variables, batch):
    logits, _ = net.apply(variables, batch["image"], train=False)
    _, m = cross_entropy(logits, batch["label"], batch.get("mask"))
    out = {"loss_sum": m["loss"] * m["count"], "correct": m["accuracy"] * m["count"],
           "count": m["count"]}
    return out if axis_name is None else jax.lax.psum(out, axis_name)
  return step


def evaluate(eval_step: Callable, variables, batches) -> Dict[str, float]:
  """{'loss', 'accuracy', 'count'} of a jitted `eval_step` over `batches`."""
  totals = None
  for batch in batches:
    out = eval_step(variables, batch)
    totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  if totals is None:
    raise ValueError("evaluate() got no batches.")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"loss": float(totals["loss_sum"]) / max(count, 1.0),
          "accuracy": float(totals["correct"]) / max(count, 1.0), "count": count}


def build_data(cfg, shard_index: int = 0, shard_count: int = 1):
  """The training stream and the held-out sources ('valid' if held out, 'test').

  Returns:
    (train_iter, info, eval_sources).
  """
  from jdarts import data as data_lib
  d = cfg.data
  info = data_lib.get_info(d.name)
  source = data_lib.load_source(d.name, "train", d.data_dir or None)
  eval_sources = {}
  if d.valid_portion > 0:
    source, eval_sources["valid"] = data_lib.search_split(source, 1.0 - d.valid_portion)
  if d.get("test_split"):
    eval_sources["test"] = data_lib.load_source(d.name, d.test_split, d.data_dir or None)
  train_it = data_lib.make_train_iterator(
      source, info, batch_size=cfg.batch_size, seed=cfg.seed, augment=d.augment,
      cutout=d.cutout, shard_index=shard_index, shard_count=shard_count)
  return train_it, info, eval_sources


def run(cfg, workdir: str) -> Dict[str, Any]:
  """Trains `cfg.genotype`'s network from scratch and writes its outputs to `workdir`.

  Args:
    cfg: a config from configs/train_*.py (see `jdarts.train_config`).
    workdir: output directory; created if absent.

  Returns:
    The summary: 'params', final 'train_accuracy' (running mean over the last
    epoch), 'valid_accuracy' / 'test_accuracy' where evaluated, 'steps',
    'compile_seconds', 'seconds'.
  """
  from jdarts import config_lib, genotypes, models, parallel, search_loop, train_config
  train_config.validate(cfg)
  search_loop.prepare_workdir(workdir)
  search_loop.enable_compilation_cache(cfg.get("compilation_cache_dir", ""))
  # Several processes (multi-host): each reads its rows of every global batch;
  # process 0 writes the outputs.
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
  num_devices = cfg.parallel.num_devices or jax.local_device_count()
  if num_devices > jax.local_device_count():
    raise config_lib.ConfigError(
        f"parallel.num_devices={num_devices} but only {jax.local_device_count()} local "
        "devices exist; lower it or use 0 for all.")
  try:
    parallel.check_divisible(cfg.batch_size, num_devices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  axis = parallel.AXIS if num_devices > 1 else None
  cross = bool(cfg.parallel.cross_replica_bn)
  net = models.build_model(cfg.model, info.num_classes, genotype=genotype,
                           bn_axis_name=axis if cross else None)
  lr_fn = learning_rate_schedule(cfg.optim, cfg.epochs, steps_per_epoch)
  tx = optimizer(cfg.optim, lr_fn)
  dp_fn = drop_path_schedule(cfg.model.drop_path_prob, cfg.epochs, steps_per_epoch,
                             cfg.drop_path_schedule)
  state = init_state(net, jax.random.PRNGKey(cfg.seed), info.image_shape, tx)
  n_params = models.count_params(state.params)
  step_fn = parallel.ParallelStep(
      make_train_step(net, tx, lr_fn, dp_fn, auxiliary_weight=cfg.loss.auxiliary_weight,
                      label_smoothing=cfg.loss.label_smoothing, axis_name=axis,
                      sync_batch_stats=axis is not None and not cross),
      backend=cfg.parallel.backend if num_devices > 1 else "none",
      devices=jax.local_devices()[:num_devices], num_batches=1)
  state = step_fn.put_state(state)
  eval_net = models.without_axis_name(net)
  eval_step = jax.jit(make_eval_step(eval_net))
  eval_batch = cfg.eval_batch_size or cfg.batch_size

  log.info("train: %s network of %s on %s, %d steps (%d per epoch), %d params "
           "(%d with the auxiliary head), %d device(s)", cfg.model.name, cfg.genotype,
           cfg.data.name, total, steps_per_epoch, n_params["params"],
           n_params["params_total"], num_devices)
  writer = search_loop.MetricsWriter(workdir) if main_process else None
  bar = search_loop._progress(total, 0, cfg.get("progress", True) and main_process)
  if bar is not None:
    bar.set_description("train")
  from jdarts import data as data_lib

  def run_eval(step):
    variables = jax.device_get(step_fn.get_state(state))
    variables = {"params": variables.params, "batch_stats": variables.batch_stats}
    res = {}
    for name, source in eval_sources.items():
      batches = data_lib.make_eval_iterator(source, info, batch_size=eval_batch)
      r = evaluate(eval_step, variables, batches)
      res[f"{name}_accuracy"], res[f"{name}_loss"] = r["accuracy"], r["loss"]
    return res

  compile_seconds, epoch_sums, epoch_n = None, {}, 0
  t_window, images = time.time(), 0
  pending, last_eval, summary = [], {}, {}
  step = 0
  while step < total:
    batch = next(train_it)
    t0 = time.time()
    state, metrics = step_fn(state, batch)
    metrics = step_fn.get_metrics(metrics)
    step += 1
    pending.append((step, metrics))
    if compile_seconds is None:
      jax.block_until_ready(metrics)
      compile_seconds = time.time() - t0
      log.info("first step (compilation included) took %.1f s", compile_seconds)
      t_window, images = time.time(), 0
    else:
      images += cfg.batch_size
    end_of_epoch = step % steps_per_epoch == 0 or step == total
    if step % cfg.log_every == 0 or end_of_epoch:
      fetched = jax.device_get(pending)
      pending = []
      for s, m in fetched:
        if not np.isfinite(m["loss"]):
          raise NonFiniteLossError(
              f"Loss became {m['loss']} at step {s}; lower optim.learning_rate.")
        for k, v in m.items():
          epoch_sums[k] = epoch_sums.get(k, 0.0) + float(v)
        epoch_n += 1
      rate = images / max(time.time() - t_window, 1e-9)
      t_window, images = time.time(), 0
      last = fetched[-1][1]
      if writer is not None:
        writer.write(step, "train", dict(last, images_per_sec=rate))
      if bar is not None:
        bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['accuracy']:.3f}",
                        img_s=f"{rate:.0f}", refresh=False)
    if bar is not None:
      bar.update(1)
    if end_of_epoch:
      epoch = -(-step // steps_per_epoch)
      means = {f"train_{k}": v / max(epoch_n, 1) for k, v in epoch_sums.items()
               if k in ("loss", "accuracy")}
      epoch_sums, epoch_n = {}, 0
      row = dict(means, epoch=epoch)
      if epoch % cfg.eval_every_epochs == 0 or step == total:
        last_eval = run_eval(step)
        row.update(last_eval)
      if writer is not None:
        writer.write(step, "epoch", row)
      summary.update(means)
      msg = f"epoch {epoch}: " + ", ".join(
          f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
      if main_process:
        (bar.write if bar is not None else print)(msg)
  if bar is not None:
    bar.close()
  summary.update(last_eval, steps=step, compile_seconds=compile_seconds,
                 seconds=time.time() - t_start, genotype=cfg.genotype, **n_params)
  if writer is not None:
    writer.write(step, "final", {k: v for k, v in summary.items()
                                 if isinstance(v, (int, float)) and v is not None})
    search_loop.write_json(os.path.join(workdir, "summary.json"), summary)
  if main_process:
    print("final: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in summary.items()
                              if k.endswith("accuracy")))
  return summary
