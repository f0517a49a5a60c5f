"""Architecture-gradient (hypergradient) estimators for bilevel search.

DARTS (Liu et al., 2019, Sect. 2.3) solves the bilevel problem::

  min_alpha L_val(w*(alpha), alpha)  s.t.  w*(alpha) = argmin_w L_train(w, alpha)

and needs d L_val / d alpha. This module holds the estimators of that
hypergradient as pure functions of user-supplied losses, so it works with any
JAX code, not only jdarts models::

  g_alpha = hypergrad.arch_grad("exact_hvp", train_loss, val_loss, params,
                                alphas, train_batch, val_batch, xi=0.025)

where ``train_loss(params, alphas, batch) -> scalar`` (likewise ``val_loss``),
``params`` and ``alphas`` are arbitrary pytrees of float arrays and the result
is shaped like ``alphas``. Methods (``METHODS``), selectable by name:

* ``first_order``: grad_alpha L_val(w, alpha) (DARTS with xi = 0).
* ``unrolled``: grad_alpha L_val(w', alpha) by autodiff through one virtual
  weight step w' (eq. 6), either plain SGD ``w - xi * g`` or the real optax
  update (momentum, weight decay, schedules included).
* ``exact_hvp``: eq. 7, the mixed second derivative times v computed exactly
  by forward-over-reverse (``jax.jvp`` of grad_alpha L_train).
* ``finite_difference``: eq. 8 as in the reference code (quark0/darts
  ``architect.py``): central difference with eps = fd_eps / ||v||_2.
* ``single_level``: Single-DARTS; grad_alpha L_train on the train batch (see
  also ``joint_grad`` for the simultaneous weight/alpha step).
* ``implicit_neumann`` / ``implicit_cg``: implicit-function-theorem
  hypergradient (as in iDARTS) at the current w, treated as a converged inner
  solution, with H_ww^{-1} v by a truncated Neumann series or truncated
  conjugate gradient on exact Hessian-vector products (`jdarts.solvers`),
  diagnostics via ``arch_grad(..., return_info=True)``.

Data parallelism: with ``axis_name`` every gradient that is used is
``lax.pmean``-ed over that axis (so the virtual step uses the globally
averaged gradient), under ``jax.pmap``, ``jax.shard_map`` (either
``check_vma`` setting) or a named ``jax.vmap`` alike.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdarts import solvers

PyTree = Any
Loss = Callable[[PyTree, PyTree, Any], Any]


# ---------------------------------------------------------------------------
# Validation and small pytree helpers.


def _check_float_leaves(tree: PyTree, name: str) -> None:
  """Raises TypeError if a leaf of `tree` is not a floating-point array."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{name}{jax.tree_util.keystr(path)} has dtype {dtype}; hypergradients "
          f"need floating-point leaves, cast it (e.g. .astype(jnp.float32)) or "
          f"move it out of {name}.")


def _wrap_loss(loss_fn: Loss, name: str, has_aux: bool) -> Callable:
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


def _grad(loss, argnums, params, alphas, batch, axis_name):
  """Device-averaged `jax.grad(loss, argnums)`; returns (grad, aux)."""
  args = [params, alphas]
  for i in (argnums if isinstance(argnums, tuple) else (argnums,)):
    args[i] = _as_varying(args[i], axis_name)
  g, aux = jax.grad(loss, argnums=argnums, has_aux=True)(*args, batch)
  return _pmean(g, axis_name), aux


_axpy = solvers.axpy


def _check_opt_state(opt_state: PyTree, params: PyTree) -> None:
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


def _check_step_args(xi, optimizer, opt_state, method: str) -> None:
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


def _virtual_step(train, params, alphas, batch, xi, optimizer, opt_state,
                  axis_name):
  g, _ = _grad(train, 0, params, alphas, batch, axis_name)
  if optimizer is None:
    return _axpy(-xi, g, params)
  updates = _optax_updates(optimizer, g, opt_state, params)
  return optax.apply_updates(params, updates)


def _mixed_product(train, params, alphas, batch, v, axis_name):
  """[grad^2_{alpha,w} L_train(w, alpha)] v, exactly, by jvp of grad_alpha."""
  grad_alpha = lambda w: _grad(train, 1, w, alphas, batch, axis_name)[0]
  # Tangents must carry the primals' dtypes (v may have been promoted).
  v = jax.tree.map(lambda t, p: t.astype(jnp.result_type(p)), v, params)
  return jax.jvp(grad_alpha, (params,), (v,))[1]


class _Options(NamedTuple):
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
  return _grad(val, 1, params, alphas, vb, o.axis_name)


def _unrolled(train, val, params, alphas, tb, vb, o):

  def outer(a):
    w1 = _virtual_step(train, params, a, tb, o.xi, o.optimizer, o.opt_state,
                       o.axis_name)
    return val(w1, a, vb)

  # Varying alphas give the per-device derivative; its mean over devices is
  # the derivative of the mean validation loss (the inner pmean transposes
  # into the same average).
  g, aux = jax.grad(outer, has_aux=True)(_as_varying(alphas, o.axis_name))
  return _pmean(g, o.axis_name), aux


def _second_order_parts(train, val, params, alphas, tb, vb, o):
  """Returns (grad_alpha L_val(w'), v = grad_w' L_val(w'), aux) from one grad."""
  w1 = _virtual_step(train, params, alphas, tb, o.xi, o.optimizer, o.opt_state,
                     o.axis_name)
  (v, g_a), aux = _grad(val, (0, 1), w1, alphas, vb, o.axis_name)
  return g_a, v, aux


def _exact_hvp(train, val, params, alphas, tb, vb, o):
  g_a, v, aux = _second_order_parts(train, val, params, alphas, tb, vb, o)
  mixed = _mixed_product(train, params, alphas, tb, v, o.axis_name)
  return _axpy(-o.xi, mixed, g_a), aux


def _finite_difference(train, val, params, alphas, tb, vb, o):
  g_a, v, aux = _second_order_parts(train, val, params, alphas, tb, vb, o)
  norm = optax.tree_utils.tree_norm(v)
  # A zero v makes the product zero for any eps; keep eps finite so 0/eps = 0.
  eps = o.fd_eps / jnp.where(norm > 0, norm, jnp.ones_like(norm))
  g_plus, _ = _grad(train, 1, _axpy(eps, v, params), alphas, tb, o.axis_name)
  g_minus, _ = _grad(train, 1, _axpy(-eps, v, params), alphas, tb, o.axis_name)
  mixed = jax.tree.map(lambda p, m: (p - m) / (2 * eps), g_plus, g_minus)
  return _axpy(-o.xi, mixed, g_a), aux


def _single_level(train, val, params, alphas, tb, vb, o):
  del val, vb
  return _grad(train, 1, params, alphas, tb, o.axis_name)


def _no_solve(estimator):
  """Gives an estimator without a linear solve the (g, aux, info) signature."""

  def with_info(*args):
    return (*estimator(*args), solvers.empty_info())

  return with_info


def _implicit(solver):

  def estimator(train, val, params, alphas, tb, vb, o):
    (g_w, g_a), aux = _grad(val, (0, 1), params, alphas, vb, o.axis_name)
    grad_w = lambda w: _grad(train, 0, w, alphas, tb, o.axis_name)[0]
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
    mixed = _mixed_product(train, params, alphas, tb, x, o.axis_name)
    return _axpy(-1.0, mixed, g_a), aux, info

  return estimator


_ESTIMATORS = {
    "first_order": _no_solve(_first_order),
    "unrolled": _no_solve(_unrolled),
    "exact_hvp": _no_solve(_exact_hvp),
    "finite_difference": _no_solve(_finite_difference),
    "single_level": _no_solve(_single_level),
    "implicit_neumann": _implicit("neumann"),
    "implicit_cg": _implicit("cg"),
}
METHODS = tuple(_ESTIMATORS)


# ---------------------------------------------------------------------------
# Public API.


def virtual_step(train_loss: Loss, params: PyTree, alphas: PyTree,
                 train_batch: Any, *, xi=None, optimizer=None, opt_state=None,
                 axis_name=None, has_aux: bool = False) -> PyTree:
  """One virtual weight step w' = w - xi * grad_w L_train, or the optax step.

  Args:
    train_loss: `(params, alphas, batch) -> scalar` (or `(scalar, aux)` when
      `has_aux`).
    params: pytree of float arrays, the weights w.
    alphas: pytree of float arrays, the architecture parameters.
    train_batch: any pytree the loss accepts.
    xi: step size of the plain SGD step; ignored when `optimizer` is given.
    optimizer: optional optax GradientTransformation; when given, w' is
      `optax.apply_updates(params, optimizer.update(g, opt_state, params)[0])`,
      i.e. exactly the step the search takes (momentum, weight decay and
      schedule included). The new optimizer state is discarded.
    opt_state: the state of `optimizer` for `params` (required with it).
    axis_name: optional mapped axis; the gradient is pmean-ed over it first.
    has_aux: whether `train_loss` returns `(scalar, aux)`.

  Returns:
    w', a pytree with the structure, shapes and dtypes of `params`.
  """
  _check_step_args(xi, optimizer, opt_state, "virtual_step")
  _check_float_leaves(params, "params")
  _check_float_leaves(alphas, "alphas")
  if optimizer is not None:
    _check_opt_state(opt_state, params)
  train = _wrap_loss(train_loss, "train_loss", has_aux)
  return _virtual_step(train, params, alphas, train_batch, xi, optimizer,
                       opt_state, axis_name)


def joint_grad(loss: Loss, params: PyTree, alphas: PyTree, batch: Any, *,
               has_aux: bool = False, axis_name=None):
  """Gradients w.r.t. params and alphas in one backward pass (Single-DARTS).

  Single-DARTS updates weights and architecture simultaneously from the same
  batch, so both gradients come from one `jax.grad(argnums=(0, 1))`.

  Args:
    loss: `(params, alphas, batch) -> scalar` (or `(scalar, aux)` when
      `has_aux`).
    params: pytree of float arrays.
    alphas: pytree of float arrays.
    batch: any pytree the loss accepts.
    has_aux: whether `loss` returns `(scalar, aux)`.
    axis_name: optional mapped axis; both gradients are pmean-ed over it.

  Returns:
    `(g_params, g_alphas)`, shaped like `params` and `alphas`; with `has_aux`,
    `((g_params, g_alphas), aux)`.
  """
  _check_float_leaves(params, "params")
  _check_float_leaves(alphas, "alphas")
  wrapped = _wrap_loss(loss, "loss", has_aux)
  grads, aux = _grad(wrapped, (0, 1), params, alphas, batch, axis_name)
  return (grads, aux) if has_aux else grads


def arch_grad(method: str, train_loss: Loss, val_loss: Loss, params: PyTree,
              alphas: PyTree, train_batch: Any, val_batch: Any, *, xi=None,
              optimizer=None, opt_state=None, fd_eps=0.01,
              neumann_terms: int = 20, neumann_lr=None, cg_iters: int = 20,
              cg_damping=solvers.CG_DAMPING, weight_decay=0.0,
              unroll_solver: bool = False, has_aux: bool = False,
              axis_name=None, return_info: bool = False):
  """Estimates the architecture gradient d L_val(w*(alpha), alpha) / d alpha.

  Pure and jit-able: `method`, `optimizer`, `has_aux`, `axis_name`,
  `neumann_terms`, `cg_iters`, `unroll_solver` and `return_info` are static
  Python values; `xi`, `fd_eps`, `neumann_lr`, `cg_damping`, `weight_decay`
  may be Python numbers or traced scalars.

  With w' the virtual step (plain SGD `w - xi * grad_w L_train` by default, or
  the optax update when `optimizer`/`opt_state` are given) and
  v = grad_w' L_val(w', alpha), the methods compute:

  * `first_order`: grad_alpha L_val(w, alpha).
  * `unrolled`: grad_alpha [L_val(w'(alpha), alpha)] by autodiff through w'.
  * `exact_hvp`: grad_alpha L_val(w', alpha) - xi [grad^2_{alpha,w} L_train] v
    (eq. 7), the product by `jax.jvp` of w -> grad_alpha L_train(w, alpha).
  * `finite_difference`: eq. 8 with eps = fd_eps / ||v||_2 (global L2 norm):
    (grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 eps).
  * `single_level`: grad_alpha L_train(w, alpha) on the *train* batch.
  * `implicit_neumann`, `implicit_cg`: grad_alpha L_val(w, alpha) -
    [grad^2_{alpha,w} L_train] H^{-1} grad_w L_val(w, alpha) at the current
    w, with H = H_ww + weight_decay I the Hessian of the objective the weight
    optimiser minimises, H^{-1} by `neumann_terms` Neumann terms with step
    `neumann_lr` or by `cg_iters` truncated-CG steps on (H + cg_damping I)
    (`jdarts.solvers`). Both stop early instead of returning garbage: CG at
    the first direction of non-positive curvature (on the first step that
    gives the first-order gradient), the series when its terms grow (the sum
    up to the last shrinking term); `return_info` says whether they did.

  `unrolled` vs `exact_hvp`: for plain SGD both are the same quantity (equal
  to round-off). With an optimizer, `unrolled` differentiates the real step
  while `exact_hvp` uses the coefficient `xi` for the second-order term. If
  the update is affine in the gradient, u = -c g + r with a scalar c and r
  independent of g (optax.sgd with or without momentum and
  add_decayed_weights: c = lr at the state's step count; nesterov:
  c = lr (1 + momentum)), then dw'/dalpha = -c d(grad_w L_train)/dalpha and the
  two agree for every loss iff xi == c. With clipping or adaptive scaling
  (adam, ...) the update is nonlinear in g and they differ in general.

  Args:
    method: one of `METHODS`.
    train_loss: `(params, alphas, batch) -> scalar` (`(scalar, aux)` with
      `has_aux`); a mean over the batch when used with `axis_name`.
    val_loss: likewise, evaluated on `val_batch`.
    params: pytree of float arrays, the weights w.
    alphas: pytree of float arrays, the architecture parameters.
    train_batch: any pytree `train_loss` accepts.
    val_batch: any pytree `val_loss` accepts.
    xi: virtual-step learning rate; required by `exact_hvp` and
      `finite_difference` (the eq. 7 coefficient) and by `unrolled` without an
      optimizer; the fallback for `neumann_lr`; otherwise ignored.
    optimizer: optional optax GradientTransformation whose update forms w'
      (`unrolled`, `exact_hvp`, `finite_difference`).
    opt_state: its state for `params`; required with `optimizer`.
    fd_eps: numerator of the finite-difference step (paper: 0.01).
    neumann_terms: K, the series runs k = 0..K.
    neumann_lr: eta in the Neumann series; it converges only for
      0 < eta < 2 / lambda_max(H) (and H positive definite), otherwise
      `info['diverged']`. Defaults to `xi`. Note that momentum SGD at learning
      rate xi can sit at sharpness lambda_max ~ 2 (1 + momentum) / xi (the
      edge of stability), beyond 2 / xi.
    cg_iters: number of conjugate-gradient iterations.
    cg_damping: lambda >= 0 added to H's diagonal for CG (not Neumann). The
      default 1e-3 (`solvers.CG_DAMPING`) bounds the solution along the flat
      directions of an over-parameterised network while changing directions
      of curvature >= 0.1 by under 1%; pass 0.0 for the undamped system.
    weight_decay: the coupled (L2) weight decay of the weight optimiser
      (`optax.add_decayed_weights(wd)`, the search's `optim.weight_decay`):
      the weights then minimise L_train + wd/2 ||w||^2, so both implicit
      solvers use H_ww + wd I. Other methods ignore it (the optax virtual step
      already includes the decay).
    unroll_solver: trace the Neumann / CG iterations one by one instead of a
      `lax.fori_loop` (same result). On XLA:CPU the loop runs convolutional
      HVPs ~7x slower; unrolling compiles `neumann_terms` / `cg_iters` copies,
      which only small networks afford.
    has_aux: losses return `(scalar, aux)`; then also return the val loss's
      aux at the point it is evaluated (w' for the unrolled/second-order
      methods, w for `first_order` and the implicit ones; for
      `single_level` the train loss's aux at w).
    axis_name: optional mapped axis (pmap / shard_map); every gradient used
      (incl. the one forming w', and v) and the result are pmean-ed over it.
    return_info: also return the linear solver's diagnostics.

  Returns:
    The hypergradient, a pytree shaped like `alphas`; with `has_aux`,
    `(g_alpha, aux)` where aux is per device (not averaged). With
    `return_info`, `(that, info)`, info a dict of JAX scalars:
    `iterations` (int32, solver steps / series terms in the result),
    `negative_curvature` (bool, CG stopped at p.Hp <= 0), `diverged` (bool,
    non-finite values or a growing Neumann series), `residual_norm`
    (||b - H x|| of the solve, H including decay and CG damping). Methods
    without a linear solve report 0 / False / 0.0.

  Raises:
    ValueError: unknown method, missing xi, opt_state not fitting params,
      a loss returning a non-scalar, bad solver settings.
    TypeError: non-float leaves, wrong loss return type.
  """
  if not isinstance(method, str) or method not in _ESTIMATORS:
    raise ValueError(f"Unknown hypergradient method {method!r}; known methods: "
                     f"{', '.join(METHODS)}.")
  uses_step = method in ("unrolled", "exact_hvp", "finite_difference")
  if method in ("exact_hvp", "finite_difference") and xi is None:
    raise ValueError(f"{method} needs xi (the coefficient of the second-order "
                     "term in eq. 7, usually the weight learning rate); pass "
                     "xi=...")
  if uses_step:
    _check_step_args(xi, optimizer, opt_state, method)
  if method == "implicit_neumann":
    neumann_lr = xi if neumann_lr is None else neumann_lr
    if neumann_lr is None:
      raise ValueError("implicit_neumann needs neumann_lr (or xi), a step "
                       "below 2 / lambda_max of the train-loss Hessian.")
    if not isinstance(neumann_terms, numbers.Integral) or neumann_terms < 0:
      raise ValueError(
          f"neumann_terms must be an int >= 0, got {neumann_terms!r}.")
    if isinstance(neumann_lr, numbers.Number) and not neumann_lr > 0:
      raise ValueError(f"neumann_lr must be > 0, got {neumann_lr!r}.")
  if method == "implicit_cg" and (not isinstance(cg_iters, numbers.Integral)
                                  or cg_iters < 1):
    raise ValueError(f"cg_iters must be an int >= 1, got {cg_iters!r}.")
  for name, value in (("cg_damping", cg_damping), ("weight_decay", weight_decay)):
    if method.startswith("implicit") and isinstance(
        value, numbers.Number) and not value >= 0:
      raise ValueError(f"{name} must be >= 0, got {value!r}.")
  if (method == "finite_difference" and isinstance(fd_eps, numbers.Number)
      and not fd_eps > 0):
    raise ValueError(f"fd_eps must be > 0, got {fd_eps!r}.")
  _check_float_leaves(params, "params")
  _check_float_leaves(alphas, "alphas")
  if uses_step and optimizer is not None:
    _check_opt_state(opt_state, params)

  opts = _Options(xi=xi, optimizer=optimizer if uses_step else None,
                  opt_state=opt_state if uses_step else None, fd_eps=fd_eps,
                  neumann_terms=int(neumann_terms), neumann_lr=neumann_lr,
                  cg_iters=int(cg_iters), cg_damping=cg_damping,
                  axis_name=axis_name, unroll_solver=bool(unroll_solver),
                  weight_decay=weight_decay)
  train = _wrap_loss(train_loss, "train_loss", has_aux)
  val = _wrap_loss(val_loss, "val_loss", has_aux)
  g, aux, info = _ESTIMATORS[method](train, val, params, alphas, train_batch,
                                     val_batch, opts)
  out = (g, aux) if has_aux else g
  return (out, info) if return_info else out
