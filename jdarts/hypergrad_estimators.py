"""The architecture-gradient estimators behind `jdarts.hypergrad.arch_grad`, by name.

`ESTIMATORS` maps a method name to an `Estimator`: the pure function, whether it
forms the virtual weight step w', whether it needs `xi`, and the check of its
own options. A method is added by registering one entry (and nothing else):

    ESTIMATORS.register("my_method", Estimator(fn, uses_virtual_step=False))

with `fn(train, val, params, alphas, train_batch, val_batch, opts) ->
(g_alpha, aux, info)`, `train`/`val` returning `(scalar, aux)` and `opts` an
`Options`. The helpers here (per-device gradients, the virtual step, the exact
mixed second-derivative product) are what the built-in estimators are made of.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jdarts import solvers
from jdarts.registry import Registry

PyTree = Any
Loss = Callable[[PyTree, PyTree, Any], Any]


# ---------------------------------------------------------------------------
# Validation and small pytree helpers.


def check_float_leaves(tree: PyTree, name: str) -> None:
  """Raises TypeError if a leaf of `tree` is not a floating-point array."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{name}{jax.tree_util.keystr(path)} has dtype {dtype}; hypergradients "
          f"need floating-point leaves, cast it (e.g. .astype(jnp.float32)) or "
          f"move it out of {name}.")


def wrap_loss(loss_fn: Loss, name: str, has_aux: bool) -> Callable:
  """Returns `loss_fn` made to return `(scalar, aux)`, checked at trace time."""

  def wrapped(params, alphas, batch):
    out = loss_fn(params, alphas, batch)
    if has_aux:
      if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"{name} must return (scalar, aux) when has_aux=True, "
                        f"got {type(out).__name__}.")
      value, aux = out
    else:
      if isinstance(out, (tuple, list)):
        raise TypeError(f"{name} returned a {type(out).__name__}; if it returns "
                        "(loss, aux) pass has_aux=True.")
      value, aux = out, None
    if jnp.shape(value) != ():
      raise ValueError(f"{name} must return a scalar, got shape "
                       f"{jnp.shape(value)}; reduce with jnp.mean.")
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
      raise TypeError(f"{name} must return a float scalar, got dtype "
                      f"{jnp.result_type(value)}.")
    return value, aux

  return wrapped


def _pmean(tree: PyTree, axis_name) -> PyTree:
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _varying_axes(leaf) -> frozenset:
  aval = jax.typeof(leaf)
  manual = getattr(aval, "manual_axis_type", None)
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))


def _manual_axes() -> frozenset:
  """Axes of the enclosing shard_map or pmap; named vmap axes are not manual."""
  get_mesh = getattr(jax.sharding, "get_abstract_mesh", None)
  if get_mesh is None:
    return frozenset()
  return frozenset(getattr(get_mesh(), "manual_axes", ()))


def _as_varying(tree: PyTree, axis_name) -> PyTree:
  """Marks replicated leaves as device-varying before they are differentiated.

  Under `shard_map` with `check_vma=True`, the gradient of a per-device loss
  w.r.t. a replicated (invariant) input is implicitly psum-ed, which would turn
  the later pmean into a sum. Casting to varying first gives per-device
  gradients under pmap and both shard_map modes, so one pmean is always right.
  Named `vmap` axes are not manual mesh axes and need (and allow) no cast.
  """
  if axis_name is None:
    return tree
  axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  manual = _manual_axes()
  cast = getattr(jax.lax, "pcast", None)
  pvary = getattr(jax.lax, "pvary", None)  # The pre-pcast spelling.

  def one(leaf):
    missing = tuple(a for a in axes
                    if a in manual and a not in _varying_axes(leaf))
    if not missing:
      return leaf
    if cast is not None:
      return cast(leaf, missing, to="varying")
    return leaf if pvary is None else pvary(leaf, missing)

  return jax.tree.map(one, tree)


def device_grad(loss, argnums, params, alphas, batch, axis_name):
  """Device-averaged `jax.grad(loss, argnums)`; returns (grad, aux)."""
  args = [params, alphas]
  for i in (argnums if isinstance(argnums, tuple) else (argnums,)):
    args[i] = _as_varying(args[i], axis_name)
  g, aux = jax.grad(loss, argnums=argnums, has_aux=True)(*args, batch)
  return _pmean(g, axis_name), aux


_axpy = solvers.axpy


def check_opt_state(opt_state: PyTree, params: PyTree) -> None:
  """Raises ValueError if a params-structured part of opt_state has other shapes.

  A structure mismatch already fails inside `optimizer.update`; a shape
  mismatch can silently broadcast (e.g. a (1,) momentum buffer for a (3,)
  weight), so params-shaped subtrees are compared leaf by leaf.
  """
  p_def = jax.tree.structure(params)
  if jax.tree_util.treedef_is_leaf(p_def):
    return  # Bare-array params look like any array in the state (e.g. counts).
  p_shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

  def visit(node):
    if jax.tree.structure(node) == p_def:
      shapes = [jnp.shape(x) for x in jax.tree.leaves(node)]
      if shapes != p_shapes:
        raise ValueError(
            f"opt_state does not fit params: a params-shaped part of it has "
            f"leaf shapes {shapes}, params have {p_shapes}; pass "
            f"opt_state=optimizer.init(params).")
      return
    children = jax.tree_util.tree_flatten(
        node, is_leaf=lambda x: x is not node)[0]
    if len(children) == 1 and children[0] is node:
      return  # a leaf
    for child in children:
      visit(child)

  visit(opt_state)


def _optax_updates(optimizer, grads, opt_state, params):
  try:
    updates, _ = optimizer.update(grads, opt_state, params)
  except (ValueError, TypeError) as e:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    raise ValueError(f"opt_state does not fit params ({first}); pass "
                     "opt_state=optimizer.init(params) for these params.") from e
  if jax.tree.structure(updates) != jax.tree.structure(params):
    raise ValueError("optimizer.update returned updates whose structure differs "
                     "from params; pass opt_state=optimizer.init(params).")
  return updates


def check_step_args(xi, optimizer, opt_state, method: str) -> None:
  if (optimizer is None) != (opt_state is None):
    raise ValueError("pass optimizer and opt_state together "
                     "(opt_state=optimizer.init(params)), or neither.")
  if optimizer is not None and not hasattr(optimizer, "update"):
    raise TypeError(f"optimizer must be an optax GradientTransformation, got "
                    f"{type(optimizer).__name__}.")
  if xi is None and optimizer is None:
    raise ValueError(f"{method} needs xi (the virtual step's learning rate, e.g. "
                     "the weight learning rate); pass xi=..., or optimizer= and "
                     "opt_state= for the real optax step.")


# ---------------------------------------------------------------------------
# Building blocks.


def virtual_update(train, params, alphas, batch, xi, optimizer, opt_state,
                  axis_name):
  return virtual_update_and_pullback(train, params, alphas, batch, xi, optimizer,
                                     opt_state, axis_name)[0]


def virtual_update_and_pullback(train, params, alphas, batch, xi, optimizer, opt_state,
                                axis_name):
  """w' = w - xi g (or the optax step from g), and v -> (d w' / d g)^T v.

  The pullback is what eq. 7's "-xi" becomes for any virtual step: with
  w'(alpha) = U(g(w, alpha)), grad_alpha L_val(w'(alpha)) = g_alpha +
  [grad^2_{alpha,w} L_train] (dU/dg)^T v, v = grad_w' L_val. For plain SGD and
  the reference's step (momentum, coupled decay, no clip) it is -lr v; through
  a clip it scales and projects v. `exact_hvp` and `finite_difference` use it,
  so they estimate the same derivative `unrolled` computes, whatever the step.
  """
  g, _ = device_grad(train, 0, params, alphas, batch, axis_name)
  return step_and_pullback(params, g, xi, optimizer, opt_state)


def step_and_pullback(params, g, xi, optimizer, opt_state):
  """w' from the (device-averaged) train gradient g, and v -> (dw'/dg)^T v.

  `virtual_update_and_pullback` less the gradient: elementwise work only, so a
  program that receives g can redo it rather than be sent w' and the pullback.
  """
  if optimizer is None:
    return _axpy(-xi, g, params), lambda v: jax.tree.map(lambda t: -xi * t, v)
  step = lambda grads: optax.apply_updates(
      params, _optax_updates(optimizer, grads, opt_state, params))
  w1, pull = jax.vjp(step, g)
  return w1, lambda v: pull(jax.tree.map(lambda t, p: t.astype(p.dtype), v, w1))[0]


def mixed_product(train, params, alphas, batch, v, axis_name):
  """[grad^2_{alpha,w} L_train(w, alpha)] v, exactly, by jvp of grad_alpha."""
  grad_alpha = lambda w: device_grad(train, 1, w, alphas, batch, axis_name)[0]
  # Tangents must carry the primals' dtypes (v may have been promoted).
  v = jax.tree.map(lambda t, p: t.astype(jnp.result_type(p)), v, params)
  return jax.jvp(grad_alpha, (params,), (v,))[1]


class Options(NamedTuple):
  """The settings every estimator receives (see `jdarts.hypergrad.arch_grad`)."""
  xi: Any
  optimizer: Any
  opt_state: Any
  fd_eps: Any
  neumann_terms: int
  neumann_lr: Any
  cg_iters: int
  cg_damping: Any
  axis_name: Any
  unroll_solver: bool = False
  weight_decay: Any = 0.0


# ---------------------------------------------------------------------------
# Estimators: (train, val, params, alphas, train_batch, val_batch, opts)
#   -> (g_alpha, aux, info); train/val return (scalar, aux), info is the
#   linear solver's (`solvers.empty_info()` for methods without one).


def _first_order(train, val, params, alphas, tb, vb, o):
  del train, tb
  return device_grad(val, 1, params, alphas, vb, o.axis_name)


def _unrolled(train, val, params, alphas, tb, vb, o):

  def outer(a):
    w1 = virtual_update(train, params, a, tb, o.xi, o.optimizer, o.opt_state,
                       o.axis_name)
    return val(w1, a, vb)

  # Varying alphas give the per-device derivative; its mean over devices is
  # the derivative of the mean validation loss (the inner pmean transposes
  # into the same average).
  g, aux = jax.grad(outer, has_aux=True)(_as_varying(alphas, o.axis_name))
  return _pmean(g, o.axis_name), aux


def second_order_parts(train, val, params, alphas, tb, vb, o):
  """(grad_alpha L_val(w'), u = (dw'/dg)^T grad_w' L_val(w'), aux): u is eq. 7's -xi v."""
  g, _ = device_grad(train, 0, params, alphas, tb, o.axis_name)
  return parts_from_grad(val, params, alphas, vb, g, o)


def parts_from_grad(val, params, alphas, vb, g, o):
  """`second_order_parts` from g = grad_w L_train(w, alpha), device-averaged."""
  w1, pull = step_and_pullback(params, g, o.xi, o.optimizer, o.opt_state)
  (v, g_a), aux = device_grad(val, (0, 1), w1, alphas, vb, o.axis_name)
  return g_a, pull(v), aux


def _exact_hvp(train, val, params, alphas, tb, vb, o):
  g_a, u, aux = second_order_parts(train, val, params, alphas, tb, vb, o)
  mixed = mixed_product(train, params, alphas, tb, u, o.axis_name)
  return _axpy(1.0, mixed, g_a), aux


def fd_step(u: PyTree, fd_eps) -> jnp.ndarray:
  """eps = fd_eps / ||u||_2 (global L2 norm), the step of eq. 8 along u."""
  norm = optax.tree_utils.tree_norm(u)
  # A zero u makes the product zero for any eps; keep eps finite so 0/eps = 0.
  return fd_eps / jnp.where(norm > 0, norm, jnp.ones_like(norm))


def fd_point(train, params, alphas, batch, u, eps, axis_name) -> PyTree:
  """grad_alpha L_train(w + eps u, alpha), device-averaged: one point of eq. 8."""
  return device_grad(train, 1, _axpy(eps, u, params), alphas, batch, axis_name)[0]


def fd_product(g_plus: PyTree, g_minus: PyTree, eps) -> PyTree:
  """The central difference (g_plus - g_minus) / (2 eps) of eq. 8."""
  return jax.tree.map(lambda p, m: (p - m) / (2 * eps), g_plus, g_minus)


def _finite_difference(train, val, params, alphas, tb, vb, o):
  # Eq. 8 along u = -xi v: the points w +- eps v/||v|| are the paper's.
  g_a, u, aux = second_order_parts(train, val, params, alphas, tb, vb, o)
  eps = fd_step(u, o.fd_eps)
  mixed = fd_product(fd_point(train, params, alphas, tb, u, eps, o.axis_name),
                     fd_point(train, params, alphas, tb, u, -eps, o.axis_name), eps)
  return _axpy(1.0, mixed, g_a), aux


def _single_level(train, val, params, alphas, tb, vb, o):
  del val, vb
  return device_grad(train, 1, params, alphas, tb, o.axis_name)


def _no_solve(estimator):
  """Gives an estimator without a linear solve the (g, aux, info) signature."""

  def with_info(*args):
    return (*estimator(*args), solvers.empty_info())

  return with_info


def _implicit(solver):

  def estimator(train, val, params, alphas, tb, vb, o):
    (g_w, g_a), aux = device_grad(val, (0, 1), params, alphas, vb, o.axis_name)
    grad_w = lambda w: device_grad(train, 0, w, alphas, tb, o.axis_name)[0]
    # Linearise once so every solver iteration reuses the forward pass.
    _, h = jax.linearize(grad_w, params)
    # The weights minimise L_train + wd/2 ||w||^2 (coupled decay), whose
    # Hessian is H + wd I; the decay has no alpha-w cross term.
    hvp = lambda v: _axpy(o.weight_decay, v, h(v))
    if solver == "neumann":
      x, info = solvers.neumann_solve(hvp, g_w, o.neumann_terms, o.neumann_lr,
                                      o.unroll_solver)
    else:
      x, info = solvers.cg_solve(hvp, g_w, o.cg_iters, o.cg_damping,
                                 o.unroll_solver)
    mixed = mixed_product(train, params, alphas, tb, x, o.axis_name)
    return _axpy(-1.0, mixed, g_a), aux, info

  return estimator




class Estimator(NamedTuple):
  """A registered architecture-gradient method.

  Attributes:
    fn: `(train, val, params, alphas, train_batch, val_batch, Options) ->
      (g_alpha, aux, info)`.
    uses_virtual_step: forms w' = one weight step (then `xi` or an optimizer).
    needs_xi: requires `xi` (the eq. 7 coefficient).
    check: `(Options) -> None`, raising ValueError on a bad setting of its own.
    second_order: its program holds second derivatives or several gradient
      passes (virtual step, Hessian-vector products, extra gradient points):
      `arch_grad` then traces it within `depthwise.compile_light()`, whose
      compile-light forms keep XLA:CPU's compile memory in bounds.
  """
  fn: Callable
  uses_virtual_step: bool = False
  needs_xi: bool = False
  check: Optional[Callable[[Options], None]] = None
  second_order: bool = False


ESTIMATORS = Registry("hypergradient method")


def _check_fd(o: Options) -> None:
  if isinstance(o.fd_eps, numbers.Number) and not o.fd_eps > 0:
    raise ValueError(f"fd_eps must be > 0, got {o.fd_eps!r}.")


def _check_solver_terms(o: Options) -> None:
  for name, value in (("cg_damping", o.cg_damping), ("weight_decay", o.weight_decay)):
    if isinstance(value, numbers.Number) and not value >= 0:
      raise ValueError(f"{name} must be >= 0, got {value!r}.")


def _check_neumann(o: Options) -> None:
  if o.neumann_lr is None:
    raise ValueError("implicit_neumann needs neumann_lr (or xi), a step "
                     "below 2 / lambda_max of the train-loss Hessian.")
  if not isinstance(o.neumann_terms, numbers.Integral) or o.neumann_terms < 0:
    raise ValueError(f"neumann_terms must be an int >= 0, got {o.neumann_terms!r}.")
  if isinstance(o.neumann_lr, numbers.Number) and not o.neumann_lr > 0:
    raise ValueError(f"neumann_lr must be > 0, got {o.neumann_lr!r}.")
  _check_solver_terms(o)


def _check_cg(o: Options) -> None:
  if not isinstance(o.cg_iters, numbers.Integral) or o.cg_iters < 1:
    raise ValueError(f"cg_iters must be an int >= 1, got {o.cg_iters!r}.")
  _check_solver_terms(o)


ESTIMATORS.register("first_order", Estimator(_no_solve(_first_order)))
ESTIMATORS.register("unrolled", Estimator(_no_solve(_unrolled), uses_virtual_step=True,
                                          second_order=True))
ESTIMATORS.register("exact_hvp", Estimator(_no_solve(_exact_hvp), uses_virtual_step=True,
                                           second_order=True))
ESTIMATORS.register("finite_difference", Estimator(
    _no_solve(_finite_difference), uses_virtual_step=True, check=_check_fd,
    second_order=True))
ESTIMATORS.register("single_level", Estimator(_no_solve(_single_level)))
ESTIMATORS.register("implicit_neumann", Estimator(_implicit("neumann"), check=_check_neumann,
                                                  second_order=True))
ESTIMATORS.register("implicit_cg", Estimator(_implicit("cg"), check=_check_cg,
                                             second_order=True))
