"""Architecture search: the search state and the pure search step, by step kind.

The state is one pytree (`SearchState`): weights, alphas, both optimiser states,
the step, the RNG and the space's carry. One search step is a pure function

    step(state, train_batch, val_batch) -> (state, metrics)

built for a step kind of `STEP_KINDS`:

* 'bilevel' (DARTS Algorithm 1): update the alphas with an architecture-gradient
  estimator of `jdarts.hypergrad` on the validation batch, then the weights on
  the training batch with the updated alphas.
* 'single_level' (Single-DARTS): one joint gradient on the training batch
  updates weights and alphas together; the validation batch is only measured.
* 'fused_first_order': 'bilevel' with `first_order`, both half-steps in one
  two-iteration `lax.scan` (same numbers, less compile time, slow on XLA:CPU).
* 'staged_bilevel': 'bilevel' with `finite_difference` or `exact_hvp` cut
  into stages that `jdarts.parallel.ParallelStep` compiles as separate
  programs (`jdarts.staged`; same numbers up to rounding). 'auto' picks it
  for both on CPU (`step_kind_for`).

With `grad_correlation=True` the step also reports `grad_correlation`, the
cosine between the alpha gradients of the training loss on the training batch
and of the validation loss on the validation batch, both at the state before
the step (Single-DARTS sec. 5.2.1: near zero for bi-level DARTS); it costs two
extra backward passes, so it is opt-in.

It is written once in per-device form: with `axis_name` set, gradients and
metrics are averaged over that device axis, so the same function runs under
`jax.jit` on one device or `jax.pmap`/`shard_map` on many. It sees the space
only through `jdarts.spaces.SearchSpace`: `space.loss(params, alphas, batch,
rng, carry)`, with `rng = fold_in(fold_in(state.rng, step), device)` and the
carry of each stream (train, val) threaded through `state.carry`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from jdarts import depthwise
from jdarts import hypergrad
from jdarts import hypergrad_estimators as he
from jdarts import optim
from jdarts import solvers
from jdarts import staged
from jdarts.registry import Registry

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
    carry: None, or {'train': c, 'val': c}: what the space carries from one
      batch of each stream to the next (leaves with the global batch axis first).
  """
  step: jnp.ndarray
  params: PyTree
  alphas: PyTree
  w_opt_state: PyTree
  a_opt_state: PyTree
  rng: jnp.ndarray
  carry: Optional[PyTree] = None


def init_state(space, rng, sample_batch, w_opt, a_opt) -> SearchState:
  """Initial search state: weights from `space.init`, alphas from `space.init_alphas`.

  `sample_batch` sets the input shapes; its batch size is the global batch the
  carries are made for (`space.init_carry`).
  """
  k_params, k_alphas, k_run = jax.random.split(rng, 3)
  params = space.init(k_params, sample_batch)
  alphas = space.init_alphas(k_alphas)
  batch_size = jax.tree_util.tree_leaves(sample_batch)[0].shape[0]
  # One carry per stream, built twice: the step donates the state, and one
  # buffer cannot be donated twice.
  carry = space.init_carry(batch_size)
  if carry is not None:
    carry = {"train": carry, "val": space.init_carry(batch_size)}
  return SearchState(step=jnp.zeros((), jnp.int32), params=params, alphas=alphas,
                     w_opt_state=w_opt.init(params), a_opt_state=a_opt.init(alphas),
                     rng=k_run, carry=carry)


def step_keys(state: SearchState, axis_name: Optional[str]):
  """(val key, train key) of this step on this device (see the module docstring)."""
  key = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  k_val, k_train = jax.random.split(key)
  return k_val, k_train


def _pmean(tree, axis_name):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _select(pred, a, b):
  return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def bind_loss(space, rng, carry) -> Callable:
  """`(params, alphas, batch) -> (loss, (aux, new carry))` with rng and carry fixed.

  The estimators differentiate w.r.t. params and alphas only; the carry coming
  in is a constant (truncated backpropagation through time).
  """
  carry = jax.lax.stop_gradient(carry)

  def loss(params, alphas, batch):
    value, aux, new_carry = space.loss(params, alphas, batch, rng, carry)
    return value, (aux, new_carry)
  return loss


class StepContext(NamedTuple):
  """What a step kind's builder gets.

  Attributes:
    space: the search space.
    arch_cfg: the config's `arch` block (method, xi, virtual_step, options).
    w_opt, a_opt: optax optimisers of the weights and the alphas.
    schedule: the weights' learning rate as a function of the step.
    axis_name: device axis, or None on one device.
    weight_decay: the weights' coupled decay (implicit estimators' Hessian).
    virtual: the second-order estimators' virtual step (`optim.virtual_step`).
    grad_clip: `optim.grad_clip` (0: none), for the `grad_clipped` metric.
  """
  space: Any
  arch_cfg: Any
  w_opt: optax.GradientTransformation
  a_opt: optax.GradientTransformation
  schedule: Callable
  axis_name: Optional[str]
  weight_decay: float = 0.0
  virtual: Optional[optim.VirtualStep] = None
  grad_clip: float = 0.0


STEP_KINDS = Registry("search step kind")


def step_kind_for(arch_cfg, backend: Optional[str] = None) -> str:
  """`arch.step_kind`, or for 'auto' the kind the estimator implies on `backend`
  (default: JAX's): 'staged_bilevel' for `finite_difference` and `exact_hvp` on
  CPU, where its programs, free to take the fused depthwise form, ran the small
  benchmark setting's whole step as fast or faster (finite differences 1.34-1.47x,
  exact HVP 1.01-1.03x), first called 1.37-1.65x sooner, compile peaks 24-26%
  lower than one program's (benchmarks/RESULTS.md, sessions 14-15).
  """
  kind = arch_cfg.get("step_kind", "auto")
  if kind != "auto":
    return kind
  method = arch_cfg.get("method")
  if method == "single_level":
    return "single_level"
  if method == "first_order" and arch_cfg.get("fuse_first_order", False):
    return "fused_first_order"
  if method in STAGED_METHODS and (backend or jax.default_backend()) == "cpu":
    return "staged_bilevel"
  return "bilevel"


def _metrics(ctx: StepContext, state, train_aux, val_aux, grad_norm, alpha_grad_norm):
  names = ("loss",) + tuple(ctx.space.metric_names)
  metrics = {f"train_{k}": train_aux[k] for k in names}
  metrics.update({f"val_{k}": val_aux[k] for k in names})
  metrics = _pmean(metrics, ctx.axis_name)
  # Whether the real update clipped this step's (device-averaged) gradient.
  clipped = (grad_norm > ctx.grad_clip) if ctx.grad_clip > 0 else jnp.zeros((), bool)
  metrics.update(lr=jnp.asarray(ctx.schedule(state.step), jnp.float32),
                 grad_norm=grad_norm, alpha_grad_norm=alpha_grad_norm,
                 grad_clipped=clipped.astype(jnp.float32),
                 param_norm=_norm(state.params))  # the weights this step starts from
  return metrics


def _norm(tree):
  return optax.tree_utils.tree_norm(tree)


def _carries(state):
  c = state.carry
  return (None, None) if c is None else (c["train"], c["val"])


def _new_carry(state, c_train, c_val):
  return None if state.carry is None else {"train": c_train, "val": c_val}


def _arch_setup(ctx: StepContext, state):
  """(train loss, val loss, `hypergrad.arch_grad` keywords) of `state`'s step on this device."""
  arch = ctx.arch_cfg
  k_val, k_train = step_keys(state, ctx.axis_name)
  c_train, c_val = _carries(state)
  lr = ctx.schedule(state.step)
  v_opt = None if ctx.virtual is None else ctx.virtual.optimizer
  kwargs = dict(xi=jnp.where(arch.xi < 0, lr, arch.xi), optimizer=v_opt,
                opt_state=None if v_opt is None else ctx.virtual.state_of(state.w_opt_state),
                axis_name=ctx.axis_name, **hypergrad.estimator_options(arch, ctx.weight_decay))
  return bind_loss(ctx.space, k_train, c_train), bind_loss(ctx.space, k_val, c_val), kwargs


def _alpha_step(ctx: StepContext, state, g_a):
  """The alphas' step from this device's architecture gradient: (alphas, opt state, |g|)."""
  g_a = _pmean(g_a, ctx.axis_name)
  a_upd, a_os = ctx.a_opt.update(g_a, state.a_opt_state, state.alphas)
  return optax.apply_updates(state.alphas, a_upd), a_os, _norm(g_a)


def _weight_step(ctx: StepContext, state, g_p, alphas, a_os, auxes, g_a_norm, carries):
  """The weights' step from the device-averaged g_p; (new state, metrics).
  `auxes`, `carries`: the (train, val) losses' aux and carries."""
  w_upd, w_os = ctx.w_opt.update(g_p, state.w_opt_state, state.params)
  new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, w_upd),
                      alphas=alphas, w_opt_state=w_os, a_opt_state=a_os,
                      carry=_new_carry(state, *carries))
  return new, _metrics(ctx, state, *auxes, _norm(g_p), g_a_norm)


def _update(ctx: StepContext, state, train_loss, train_batch, g_a, val_aux, c_val):
  """Algorithm 1 from the architecture gradient on: the alphas' step, then the
  weights' with the updated alphas; returns (new state, metrics)."""
  alphas, a_os, g_a_norm = _alpha_step(ctx, state, g_a)
  (_, (train_aux, c_train)), g_p = jax.value_and_grad(train_loss, has_aux=True)(
      state.params, alphas, train_batch)
  return _weight_step(ctx, state, _pmean(g_p, ctx.axis_name), alphas, a_os,
                      (train_aux, val_aux), g_a_norm, (c_train, c_val))


@STEP_KINDS.register("bilevel")
def _bilevel(ctx: StepContext) -> Callable:

  def step(state, train_batch, val_batch):
    train_loss, val_loss, kwargs = _arch_setup(ctx, state)
    g_a, (val_aux, c_val) = hypergrad.arch_grad(
        ctx.arch_cfg.method, train_loss, val_loss, state.params, state.alphas, train_batch,
        val_batch, has_aux=True, **kwargs)
    return _update(ctx, state, train_loss, train_batch, g_a, val_aux, c_val)
  return step


STAGED_METHODS = ("finite_difference", "exact_hvp")


@STEP_KINDS.register("staged_bilevel")
def _staged_bilevel(ctx: StepContext) -> staged.StagedStep:
  """'bilevel' with a second-order estimator cut into programs (`jdarts.staged`).

  Stages: 'grad' (grad_w L_train at the state's alphas: the virtual step's
  gradient); 'val' (w' from it, grad_alpha L_val(w') and u = (dw'/dg)^T
  grad_w' L_val(w')); for `finite_difference` 'point', grad_alpha L_train(w +
  eps u), run at +eps and at -eps; for `exact_hvp` 'product', [grad^2_{alpha,w}
  L_train] u (within `compile_light`: it differentiates twice); 'alphas', the
  alphas' step; 'grad' again at the new alphas, the weights' gradient; then
  'update', the weights' step. Only 'product' is second order, so the others
  may take the fused depthwise form; each holds at most one gradient, which
  bounds the largest program (and its compile memory), and the one gradient
  program serves both weight gradients.
  """
  method = ctx.arch_cfg.method
  if method not in STAGED_METHODS:
    raise ValueError(f"step kind 'staged_bilevel' computes {' or '.join(STAGED_METHODS)}, "
                     f"not arch.method={method!r}; use arch.step_kind='bilevel'.")
  fd = method == "finite_difference"

  def setup(state):
    train, val, kwargs = _arch_setup(ctx, state)
    o = hypergrad.options(method, **kwargs)
    hypergrad.check_args(method, state.params, state.alphas, o)
    return he.wrap_loss(train, "train_loss", True), he.wrap_loss(val, "val_loss", True), o

  def grad(state, train_batch, val_batch, _):
    train, _, o = setup(state)
    g, (aux, c_train) = he.device_grad(train, 0, state.params, state.alphas, train_batch,
                                       o.axis_name)
    # Replicated scratch must be equal on every device: metrics averaged now.
    return staged.scratch(dict(g=g, aux=_pmean(aux, ctx.axis_name)), dict(c_train=c_train))

  def val(state, train_batch, val_batch, s):
    _, val, o = setup(state)
    g_a, u, (val_aux, c_val) = he.parts_from_grad(val, state.params, state.alphas, val_batch,
                                                  s[staged.REP]["g"], o)
    rep = dict(g_a=g_a, u=u, val_aux=_pmean(val_aux, ctx.axis_name))
    if fd:
      eps = he.fd_step(u, o.fd_eps)
      rep.update(eps=eps, neg_eps=-eps)
    return staged.scratch(rep, dict(c_val=c_val))

  def point(state, train_batch, val_batch, s):
    return staged.scratch(dict(g=he.fd_point(
        _arch_setup(ctx, state)[0], state.params, state.alphas, train_batch,
        s[staged.REP]["u"], s[staged.REP]["eps"], ctx.axis_name)))

  def product(state, train_batch, val_batch, s):
    train = _arch_setup(ctx, state)[0]
    with depthwise.compile_light():
      mixed = he.mixed_product(train, state.params, state.alphas, train_batch,
                               s[staged.REP]["u"], ctx.axis_name)
    return staged.scratch(dict(mixed=mixed))

  def alphas(state, train_batch, val_batch, s):
    r = s[staged.REP]
    mixed = he.fd_product(r["g_plus"], r["g_minus"], r["eps"]) if fd else r["mixed"]
    new, a_os, norm = _alpha_step(ctx, state, solvers.axpy(1.0, mixed, r["g_a"]))
    return staged.scratch(dict(alphas=new, a_opt_state=a_os, g_a_norm=norm))

  def update(state, train_batch, val_batch, s):
    r, rows = s[staged.REP], s[staged.ROWS]
    return _weight_step(ctx, state, r["g"], r["alphas"], r["a_opt_state"],
                        (r["aux"], r["val_aux"]), r["g_a_norm"], (rows["c_train"], rows["c_val"]))

  def drive(call, state, train_batch, val_batch):
    run = lambda name, st, s: call(name, st, train_batch, val_batch, s)
    s = run("val", state, run("grad", state, staged.scratch()))
    rep = dict(s[staged.REP])
    u = rep.pop("u")
    if fd:
      at = lambda eps: run("point", state, staged.scratch(dict(u=u, eps=eps)))[staged.REP]["g"]
      rep.update(g_plus=at(rep["eps"]), g_minus=at(rep.pop("neg_eps")))
    else:
      rep["mixed"] = run("product", state, staged.scratch(dict(u=u)))[staged.REP]["mixed"]
    new_a = run("alphas", state, staged.scratch(rep))[staged.REP]
    # The weights' gradient at the new alphas: the first 'grad' program again.
    w = run("grad", state.replace(alphas=new_a["alphas"]), staged.scratch())
    return run("update", state, staged.scratch(
        dict(w[staged.REP], val_aux=rep["val_aux"], **new_a),
        dict(s[staged.ROWS], **w[staged.ROWS])))

  stages = dict(grad=grad, val=val, **(dict(point=point) if fd else dict(product=product)))
  return staged.StagedStep(dict(stages, alphas=alphas, update=update), drive, final="update",
                           light=True)


def _joint(loss, params, alphas, batch, axis):
  (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, alphas, batch)
  return aux, _pmean(grads, axis)


@STEP_KINDS.register("single_level")
def _single_level(ctx: StepContext) -> Callable:
  axis = ctx.axis_name

  def step(state, train_batch, val_batch):
    k_val, k_train = step_keys(state, axis)
    c_train, c_val = _carries(state)
    (train_aux, c_train), (g_p, g_a) = _joint(
        bind_loss(ctx.space, k_train, c_train), state.params, state.alphas, train_batch,
        axis)
    a_upd, a_os = ctx.a_opt.update(g_a, state.a_opt_state, state.alphas)
    w_upd, w_os = ctx.w_opt.update(g_p, state.w_opt_state, state.params)
    _, (val_aux, c_val) = bind_loss(ctx.space, k_val, c_val)(
        state.params, state.alphas, val_batch)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, w_upd),
                        alphas=optax.apply_updates(state.alphas, a_upd), w_opt_state=w_os,
                        a_opt_state=a_os, carry=_new_carry(state, c_train, c_val))
    return new, _metrics(ctx, state, train_aux, val_aux, _norm(g_p), _norm(g_a))
  return step


@STEP_KINDS.register("fused_first_order")
def _fused_first_order(ctx: StepContext) -> Callable:
  """First-order bilevel as a two-iteration `lax.scan` over (val, train) half-steps.

  Same numbers as 'bilevel' with `first_order` and ~30% less compile time, but
  on XLA:CPU ~10x slower per step (C=8, 2 and 5 cells, batch 16: 14.9 s vs
  1.4 s; 38 s vs 4.6 s): the convolutions inside the loop body miss the fast
  paths. Measure before choosing it elsewhere.
  """
  axis = ctx.axis_name
  if ctx.arch_cfg.method != "first_order":
    raise ValueError("step kind 'fused_first_order' needs arch.method='first_order', got "
                     f"{ctx.arch_cfg.method!r}.")

  def step(state, train_batch, val_batch):
    k_val, k_train = step_keys(state, axis)
    stack = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.stack([x, y]), a, b)
    batches = stack(val_batch, train_batch)
    c_train, c_val = _carries(state)
    carries = None if state.carry is None else stack(c_val, c_train)

    def body(loop, xs):
      params, alphas, w_os, a_os = loop
      batch, key, carry, is_arch = xs
      (aux, new_c), (g_p, g_a) = _joint(bind_loss(ctx.space, key, carry), params, alphas,
                                        batch, axis)
      a_upd, a_os_new = ctx.a_opt.update(g_a, a_os, alphas)
      w_upd, w_os_new = ctx.w_opt.update(g_p, w_os, params)
      loop = (_select(is_arch, params, optax.apply_updates(params, w_upd)),
              _select(is_arch, optax.apply_updates(alphas, a_upd), alphas),
              _select(is_arch, w_os, w_os_new), _select(is_arch, a_os_new, a_os))
      return loop, (aux, new_c, _norm(g_p), _norm(g_a))

    loop = (state.params, state.alphas, state.w_opt_state, state.a_opt_state)
    (params, alphas, w_os, a_os), (aux, new_c, g_p, g_a) = jax.lax.scan(
        body, loop, (batches, jnp.stack([k_val, k_train]), carries,
                     jnp.array([True, False])))
    pick = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)
    new = state.replace(step=state.step + 1, params=params, alphas=alphas, w_opt_state=w_os,
                        a_opt_state=a_os,
                        carry=_new_carry(state, pick(new_c, 1), pick(new_c, 0)))
    return new, _metrics(ctx, state, pick(aux, 1), pick(aux, 0), pick(g_p, 1),
                         pick(g_a, 0))
  return step


def grad_correlation(space, state: SearchState, train_batch, val_batch,
                     axis_name: Optional[str] = None) -> jnp.ndarray:
  """cos(grad_alpha L_train(train batch), grad_alpha L_val(val batch)) at `state` (sec. 5.2.1).

  Uses the step's own keys and carries, so it sees the functions the step sees;
  under a device map the gradients are averaged over `axis_name` first.
  """
  k_val, k_train = step_keys(state, axis_name)
  c_train, c_val = _carries(state)

  def grad(key, carry, batch):
    loss = bind_loss(space, key, carry)
    return jax.grad(lambda a: loss(state.params, a, batch)[0])(state.alphas)
  g_t = _pmean(grad(k_train, c_train, train_batch), axis_name)
  g_v = _pmean(grad(k_val, c_val, val_batch), axis_name)
  dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g_t),
                                          jax.tree_util.tree_leaves(g_v)))
  return (dot / jnp.maximum(_norm(g_t) * _norm(g_v), 1e-30)).astype(jnp.float32)


def _compile_light(step: Callable) -> Callable:
  """`step` traced within `depthwise.compile_light()`: its weight update too, so a
  second-order program holds one depthwise form, the one that compiles lightly."""
  @functools.wraps(step)
  def wrapped(*args):
    with depthwise.compile_light():
      return step(*args)
  return wrapped


def make_search_step(space, arch_cfg, w_opt, a_opt, schedule, *,
                     axis_name: Optional[str] = None, weight_decay: float = 0.0,
                     log_grad_correlation: bool = False, optim_cfg=None) -> Callable:
  """Builds the per-device search step `(state, train_batch, val_batch) -> (state, metrics)`.

  Args:
    space: a search space (`jdarts.spaces.SearchSpace`).
    arch_cfg: the config's `arch` block: `method` (a `hypergrad.ESTIMATORS` name),
      `step_kind` ('auto' or a `STEP_KINDS` name), `xi` (virtual-step learning
      rate; negative: the weights' current learning rate, paper footnote 1),
      `virtual_step` (`optim.VIRTUAL_STEPS`: 'reference', the default, the
      real update without its clip as quark0/darts; 'clip_constant', clip
      included with its coefficient held constant, as quark0/darts rnn/;
      'real_update', clip included and differentiated; 'sgd': w - xi * g),
      `fd_eps`, `neumann_terms`, `neumann_lr`, `cg_iters`, `cg_damping`,
      `unroll_solver`, `fuse_first_order`.
    w_opt, a_opt: optax optimisers of the weights and the alphas.
    schedule: the weights' learning rate as a function of the step.
    axis_name: device axis to average gradients, metrics and (if the space
      was built with it) BatchNorm moments over; None on one device.
    weight_decay: `optim.weight_decay`, for the implicit estimators' Hessian.
    log_grad_correlation: also report `grad_correlation` (`grad_correlation`).
    optim_cfg: the config's `optim` block: the virtual step is built from it
      (`optim.virtual_step`) and `grad_clipped` compares with its
      `grad_clip`. Needed by the second-order methods unless
      `arch.virtual_step='sgd'`.

  Returns:
    The step function (for 'staged_bilevel' a `jdarts.staged.StagedStep`: a
    function too, one program under `jax.jit`, several under
    `jdarts.parallel.ParallelStep`); metrics are float32 scalars: train_loss, val_loss,
    train_<m> and val_<m> for each of `space.metric_names`, lr, grad_norm,
    alpha_grad_norm, param_norm (of the weights the step starts from),
    grad_clipped (1.0 when grad_norm > optim.grad_clip, i.e.
    the real update clipped the weight gradient; 0.0 without optim_cfg), and
    grad_correlation when asked.
  """
  if arch_cfg.method not in hypergrad.ESTIMATORS:
    raise ValueError(f"Unknown arch.method {arch_cfg.method!r}; choose one of "
                     f"{', '.join(hypergrad.ESTIMATORS.names())}.")
  kind = arch_cfg.get("virtual_step", "reference")
  virtual = None
  if optim_cfg is not None:
    virtual = optim.virtual_step(kind, optim_cfg, schedule)
  elif kind == "sgd":
    virtual = optim.VirtualStep(None, lambda s: None)
  elif hypergrad.estimator(arch_cfg.method).uses_virtual_step:
    raise ValueError(f"arch.method={arch_cfg.method!r} with arch.virtual_step={kind!r} "
                     "builds w' from the optim block: pass optim_cfg=cfg.optim.")
  grad_clip = float(optim_cfg.grad_clip or 0.0) if optim_cfg is not None else 0.0
  build = STEP_KINDS.get(step_kind_for(arch_cfg))
  inner = build(StepContext(space, arch_cfg, w_opt, a_opt, schedule, axis_name,
                            float(weight_decay or 0.0), virtual, grad_clip))
  if isinstance(inner, staged.StagedStep):
    if log_grad_correlation:
      inner = staged.with_metric_stage(inner, "grad_correlation", lambda *args: (
          grad_correlation(space, *args, axis_name=axis_name)))
    return inner
  if hypergrad.estimator(arch_cfg.method).second_order:
    inner = _compile_light(inner)
  if not log_grad_correlation:
    return inner

  def step(state, train_batch, val_batch):
    corr = grad_correlation(space, state, train_batch, val_batch, axis_name)
    new, metrics = inner(state, train_batch, val_batch)
    return new, {**metrics, "grad_correlation": corr}
  return step
