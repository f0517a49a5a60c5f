"""Training a genotype's network from scratch: the evaluation of paper sec. 3.2.

The pieces of `jdarts train` (configs/train_*.py), importable on their own:

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

Mixed precision: a network built with `dtype=bfloat16` computes in bfloat16
while its weights, optimiser state and BatchNorm averages stay float32; the
losses are computed from float32 logits.

The loop behind `jdarts train` (data, checkpoints, resumption, outputs) is
`jdarts.train_loop.run`.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from jdarts import evaluation
from jdarts.losses import cross_entropy

log = logging.getLogger("jdarts")
PyTree = Any


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
    accuracy, lr, grad_norm, param_norm (before the update), drop_path_prob.
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
      if logits_aux is not None:
        logits_aux = logits_aux.astype(jnp.float32)
      loss, metrics = classification_loss(
          logits.astype(jnp.float32), logits_aux, batch["label"],
          auxiliary_weight=auxiliary_weight,
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
                   param_norm=optax.tree.norm(state.params),  # before this update
                   drop_path_prob=jnp.asarray(p, jnp.float32))
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                        opt_state=opt_state)
    return new, metrics
  return step


def make_eval_step(net, *, axis_name: Optional[str] = None) -> Callable:
  """`(variables, batch) -> {'loss', 'accuracy', 'count'}` sums in inference mode.

  Plain cross-entropy of the main logits (the reference's `infer`), masked
  sums (`jdarts.evaluation.masked_sums`) so padded final batches count every
  example once.
  """
  def step(variables, batch):
    logits, _ = net.apply(variables, batch["image"], train=False)
    _, m = cross_entropy(logits.astype(jnp.float32), batch["label"], batch.get("mask"))
    return evaluation.masked_sums(m, ("accuracy",), axis_name)
  return step


def evaluate(eval_step: Callable, variables, batches) -> Dict[str, float]:
  """{'loss', 'accuracy', 'count'} of a jitted `eval_step` over `batches`."""
  return evaluation.finish(evaluation.accumulate(eval_step(variables, b) for b in batches),
                           ("accuracy",))
