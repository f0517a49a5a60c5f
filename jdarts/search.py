"""Architecture search: the search state, its optimisers, and the pure search step.

The state is one pytree (`SearchState`): weights, alphas, both optimiser states,
the step and the RNG. One search step is a pure function

    step(state, train_batch, val_batch) -> (state, metrics)

that first updates the alphas with an architecture-gradient estimator from
`jdarts.hypergrad` (on the validation batch) and then the weights (on the
training batch, with the updated alphas), as in Algorithm 1 of the DARTS paper.
It is written once in per-device form: with `axis_name` set, gradients and
metrics are averaged over that device axis, so the same function runs under
`jax.jit` on one device or `jax.pmap`/`shard_map` on many.

The loop that drives it (data, logging, outputs) lives in `jdarts.search_loop`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from jdarts import hypergrad
from jdarts import schedules

PyTree = Any


@flax.struct.dataclass
class SearchState:
  """Everything a search step reads and writes.

  Attributes:
    step: int32 scalar, number of completed search steps.
    params: network weights.
    alphas: architecture parameters, e.g. {'normal': (14, 8), 'reduce': (14, 8)}.
    w_opt_state: optimiser state of the weights.
    a_opt_state: optimiser state of the alphas.
    rng: PRNG key; step keys are `fold_in(rng, step)`, so a resumed run draws
      the same numbers as an uninterrupted one.
  """
  step: jnp.ndarray
  params: PyTree
  alphas: PyTree
  w_opt_state: PyTree
  a_opt_state: PyTree
  rng: jnp.ndarray


def weight_schedule(optim_cfg, epochs: int, steps_per_epoch: int):
  """The weights' learning rate as a function of the step (paper A.1.1: cosine)."""
  name = optim_cfg.get("schedule", "cosine_by_epoch")
  if name == "cosine_by_epoch":
    return schedules.cosine_by_epoch(optim_cfg.learning_rate, optim_cfg.learning_rate_min,
                                     epochs, steps_per_epoch)
  if name == "cosine":
    return schedules.cosine(optim_cfg.learning_rate, optim_cfg.learning_rate_min,
                            epochs * steps_per_epoch)
  if name == "constant":
    return lambda step: jnp.asarray(optim_cfg.learning_rate, jnp.float32)
  raise ValueError(f"Unknown optim.schedule {name!r}; choose cosine_by_epoch, cosine "
                   "or constant.")


def weight_optimizer(optim_cfg, schedule) -> optax.GradientTransformation:
  """Momentum SGD with coupled weight decay and global-norm clipping.

  Matches the reference: the raw gradient is clipped to `grad_clip`, then
  `weight_decay * w` is added, then momentum SGD (PyTorch's convention, which
  optax.sgd follows: buf = momentum * buf + g; w -= lr * buf).
  """
  parts = []
  if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  if optim_cfg.weight_decay:
    parts.append(optax.add_decayed_weights(optim_cfg.weight_decay))
  parts.append(optax.sgd(schedule, momentum=optim_cfg.momentum or None))
  return optax.chain(*parts)


def arch_optimizer(arch_cfg) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient (PyTorch Adam's weight_decay)."""
  parts = []
  if arch_cfg.weight_decay:
    parts.append(optax.add_decayed_weights(arch_cfg.weight_decay))
  parts.append(optax.adam(arch_cfg.learning_rate, b1=arch_cfg.b1, b2=arch_cfg.b2))
  return optax.chain(*parts)


def init_state(space, rng, sample_batch, w_opt, a_opt) -> SearchState:
  """Initial search state: weights from `space.init`, alphas from `space.init_alphas`."""
  k_params, k_alphas, k_run = jax.random.split(rng, 3)
  params = space.init(k_params, sample_batch)
  alphas = space.init_alphas(k_alphas)
  return SearchState(step=jnp.zeros((), jnp.int32), params=params, alphas=alphas,
                     w_opt_state=w_opt.init(params), a_opt_state=a_opt.init(alphas),
                     rng=k_run)


def _global_norm(tree):
  return optax.tree_utils.tree_norm(tree)


def _pmean(tree, axis_name):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _select(pred, a, b):
  return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def estimator_options(arch_cfg) -> dict:
  """The `hypergrad.arch_grad` settings an `arch` config block holds.

  Returns:
    {'fd_eps', 'neumann_terms', 'neumann_lr' (None: use xi), 'cg_iters',
    'cg_damping', 'unroll_solver'}, defaults filled in for older configs.
  """
  return dict(fd_eps=arch_cfg.get("fd_eps", 0.01),
              neumann_terms=arch_cfg.get("neumann_terms", 20),
              neumann_lr=(arch_cfg.get("neumann_lr", 0.0) or None),
              cg_iters=arch_cfg.get("cg_iters", 20),
              cg_damping=arch_cfg.get("cg_damping", 0.0),
              unroll_solver=arch_cfg.get("unroll_solver", False))


def make_search_step(space, arch_cfg, w_opt, a_opt, schedule, *,
                     axis_name: Optional[str] = None,
                     fuse_first_order: bool = False) -> Callable:
  """Builds the per-device search step `(state, train_batch, val_batch) -> (state, metrics)`.

  Args:
    space: a search space (see `jdarts.spaces`): `space.loss(params, alphas,
      batch) -> (loss, aux)`.
    arch_cfg: the config's `arch` block: `method` (a `hypergrad.METHODS` name),
      `xi` (virtual-step learning rate; negative: the weights' current
      learning rate, paper footnote 1), `virtual_step` ('optimizer': the
      real optax weight update incl. momentum, weight decay and clipping;
      'sgd': plain w - xi * g), `fd_eps`, `neumann_terms`, `neumann_lr`,
      `cg_iters`, `cg_damping`.
    w_opt, a_opt: optax optimisers of the weights and the alphas.
    schedule: the weights' learning rate as a function of the step.
    axis_name: device axis to average gradients, metrics and (if the space
      was built with it) BatchNorm moments over; None on one device.
    fuse_first_order: for 'first_order', run the architecture and the weight
      half-steps through one compiled gradient computation (a two-iteration
      `lax.scan`). Same numbers and ~30% less compile time, but on XLA:CPU
      ~10x slower per step (C=8, 2 and 5 cells, batch 16: 14.9 s vs 1.4 s;
      38 s vs 4.6 s): the convolutions inside the loop body miss the fast
      paths. Off by default; measure before turning it on elsewhere.

  Returns:
    The step function; metrics are float32 scalars: train_loss,
    train_accuracy, val_loss, val_accuracy, lr, grad_norm, alpha_grad_norm.
  """
  method = arch_cfg.method
  if method not in hypergrad.METHODS:
    raise ValueError(f"Unknown arch.method {method!r}; choose one of "
                     f"{', '.join(hypergrad.METHODS)}.")
  loss_fn = space.loss

  def joint(params, alphas, batch):
    (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        params, alphas, batch)
    return aux, _pmean(grads, axis_name)

  def weight_half(state, alphas, batch, a_metrics):
    (_, aux), g_p = jax.value_and_grad(loss_fn, has_aux=True)(state.params, alphas, batch)
    g_p = _pmean(g_p, axis_name)
    upd, w_os = w_opt.update(g_p, state.w_opt_state, state.params)
    params = optax.apply_updates(state.params, upd)
    return params, w_os, aux, g_p

  def finish(state, params, alphas, w_os, a_os, train_aux, val_aux, g_p, g_a):
    metrics = {"train_loss": train_aux["loss"], "train_accuracy": train_aux["accuracy"],
               "val_loss": val_aux["loss"], "val_accuracy": val_aux["accuracy"]}
    metrics = _pmean(metrics, axis_name)
    metrics.update(lr=jnp.asarray(schedule(state.step), jnp.float32),
                   grad_norm=_global_norm(g_p), alpha_grad_norm=_global_norm(g_a))
    new = state.replace(step=state.step + 1, params=params, alphas=alphas,
                        w_opt_state=w_os, a_opt_state=a_os)
    return new, metrics

  def fused_first_order(state, train_batch, val_batch):
    batches = jax.tree_util.tree_map(lambda v, t: jnp.stack([v, t]), val_batch, train_batch)

    def body(carry, xs):
      params, alphas, w_os, a_os = carry
      batch, is_arch = xs
      aux, (g_p, g_a) = joint(params, alphas, batch)
      a_upd, a_os_new = a_opt.update(g_a, a_os, alphas)
      w_upd, w_os_new = w_opt.update(g_p, w_os, params)
      carry = (_select(is_arch, params, optax.apply_updates(params, w_upd)),
               _select(is_arch, optax.apply_updates(alphas, a_upd), alphas),
               _select(is_arch, w_os, w_os_new), _select(is_arch, a_os_new, a_os))
      return carry, (aux, _global_norm(g_p), _global_norm(g_a))

    carry = (state.params, state.alphas, state.w_opt_state, state.a_opt_state)
    (params, alphas, w_os, a_os), (aux, gp_norm, ga_norm) = jax.lax.scan(
        body, carry, (batches, jnp.array([True, False])))
    pick = lambda i: jax.tree_util.tree_map(lambda x: x[i], aux)
    new, metrics = finish(state, params, alphas, w_os, a_os, pick(1), pick(0), {}, {})
    metrics.update(grad_norm=gp_norm[1], alpha_grad_norm=ga_norm[0])
    return new, metrics

  def single_level(state, train_batch, val_batch):
    # Single-DARTS: one joint gradient on the training batch updates both.
    aux, (g_p, g_a) = joint(state.params, state.alphas, train_batch)
    a_upd, a_os = a_opt.update(g_a, state.a_opt_state, state.alphas)
    w_upd, w_os = w_opt.update(g_p, state.w_opt_state, state.params)
    _, val_aux = loss_fn(state.params, state.alphas, val_batch)
    return finish(state, optax.apply_updates(state.params, w_upd),
                  optax.apply_updates(state.alphas, a_upd), w_os, a_os, aux, val_aux,
                  g_p, g_a)

  def bilevel(state, train_batch, val_batch):
    lr = schedule(state.step)
    xi = jnp.where(arch_cfg.xi < 0, lr, arch_cfg.xi)
    real_step = arch_cfg.get("virtual_step", "optimizer") == "optimizer"
    g_a, val_aux = hypergrad.arch_grad(
        method, loss_fn, loss_fn, state.params, state.alphas, train_batch, val_batch,
        xi=xi, optimizer=w_opt if real_step else None,
        opt_state=state.w_opt_state if real_step else None,
        has_aux=True, axis_name=axis_name, **estimator_options(arch_cfg))
    g_a = _pmean(g_a, axis_name)
    a_upd, a_os = a_opt.update(g_a, state.a_opt_state, state.alphas)
    alphas = optax.apply_updates(state.alphas, a_upd)
    params, w_os, train_aux, g_p = weight_half(state, alphas, train_batch, None)
    return finish(state, params, alphas, w_os, a_os, train_aux, val_aux, g_p, g_a)

  if method == "single_level":
    return single_level
  if method == "first_order" and fuse_first_order:
    return fused_first_order
  return bilevel


def make_eval_step(space, *, axis_name: Optional[str] = None) -> Callable:
  """`(params, alphas, batch) -> {'loss_sum', 'correct', 'count'}`, masked sums.

  Sums (not means) so that padded final batches and several devices combine
  exactly: accuracy = sum(correct) / sum(count).
  """
  def step(params, alphas, batch):
    _, aux = space.loss(params, alphas, batch)
    out = {"loss_sum": aux["loss"] * aux["count"],
           "correct": aux["accuracy"] * aux["count"], "count": aux["count"]}
    return out if axis_name is None else jax.lax.psum(out, axis_name)
  return step


def evaluate(eval_step: Callable, params, alphas, batches) -> Dict[str, float]:
  """Runs a jitted `eval_step` over an iterable of batches.

  Returns:
    {'loss': mean loss, 'accuracy': fraction correct, 'count': examples}.
  """
  totals = None
  for batch in batches:
    out = eval_step(params, alphas, batch)
    totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  if totals is None:
    raise ValueError("evaluate() got no batches.")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"loss": float(totals["loss_sum"]) / max(count, 1.0),
          "accuracy": float(totals["correct"]) / max(count, 1.0), "count": count}
