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
  by forward-over-reverse (``jax.jvp`` of grad_alpha L_train); v is first
  pulled back through the virtual step (-xi v for plain SGD), so it equals
  ``unrolled`` for any virtual step, clipped or not.
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
from typing import Any, Callable

from jdarts import depthwise
from jdarts import solvers
from jdarts.hypergrad_estimators import (ESTIMATORS, Estimator, Options, check_float_leaves,
                                         check_opt_state, check_step_args, device_grad,
                                         virtual_update, wrap_loss)

PyTree = Any
Loss = Callable[[PyTree, PyTree, Any], Any]


# ---------------------------------------------------------------------------
# Public API.

# The built-in methods; `ESTIMATORS` also holds any a user registers.
METHODS = tuple(ESTIMATORS.names())


def estimator(method: str) -> Estimator:
  """The registered `Estimator` of `method`; ValueError naming the known ones otherwise."""
  if not isinstance(method, str) or method not in ESTIMATORS:
    raise ValueError(f"Unknown hypergradient method {method!r}; known methods: "
                     f"{', '.join(ESTIMATORS.names())}.")
  return ESTIMATORS.get(method)


def options(method: str, *, xi=None, optimizer=None, opt_state=None, fd_eps=0.01,
            neumann_terms: int = 20, neumann_lr=None, cg_iters: int = 20,
            cg_damping=solvers.CG_DAMPING, weight_decay=0.0, unroll_solver: bool = False,
            axis_name=None) -> Options:
  """The checked `Options` of `method` (see `arch_grad` for the arguments).

  Every check of a method's settings happens here, before anything is traced,
  so a search config can be validated up front with the same code.

  Raises:
    ValueError: unknown method, a missing xi, or a bad setting of the method.
  """
  est = estimator(method)
  if est.needs_xi and xi is None:
    raise ValueError(f"{method} needs xi (the coefficient of the second-order "
                     "term in eq. 7, usually the weight learning rate); pass xi=...")
  if est.uses_virtual_step:
    check_step_args(xi, optimizer, opt_state, method)
  if method == "implicit_neumann" and neumann_lr is None:
    neumann_lr = xi
  opts = Options(xi=xi, optimizer=optimizer if est.uses_virtual_step else None,
                 opt_state=opt_state if est.uses_virtual_step else None, fd_eps=fd_eps,
                 neumann_terms=neumann_terms, neumann_lr=neumann_lr, cg_iters=cg_iters,
                 cg_damping=cg_damping, axis_name=axis_name,
                 unroll_solver=bool(unroll_solver), weight_decay=weight_decay)
  if est.check is not None:
    est.check(opts)
  return opts._replace(neumann_terms=int(neumann_terms), cg_iters=int(cg_iters))


def check_args(method: str, params: PyTree, alphas: PyTree, opts: Options) -> None:
  """Raises TypeError for non-float params or alphas, ValueError for an optimizer
  state `method`'s virtual step cannot use with `params` (at trace time)."""
  check_float_leaves(params, "params")
  check_float_leaves(alphas, "alphas")
  if estimator(method).uses_virtual_step and opts.optimizer is not None:
    check_opt_state(opts.opt_state, params)


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
  check_step_args(xi, optimizer, opt_state, "virtual_step")
  check_float_leaves(params, "params")
  check_float_leaves(alphas, "alphas")
  if optimizer is not None:
    check_opt_state(opt_state, params)
  train = wrap_loss(train_loss, "train_loss", has_aux)
  return virtual_update(train, params, alphas, train_batch, xi, optimizer,
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
  check_float_leaves(params, "params")
  check_float_leaves(alphas, "alphas")
  wrapped = wrap_loss(loss, "loss", has_aux)
  grads, aux = device_grad(wrapped, (0, 1), params, alphas, batch, axis_name)
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
  * `exact_hvp`: grad_alpha L_val(w', alpha) + [grad^2_{alpha,w} L_train] u,
    u = (dw'/dg)^T v the virtual step's pullback of v (g = grad_w L_train):
    -xi v for plain SGD, which is eq. 7; the product by `jax.jvp` of
    w -> grad_alpha L_train(w, alpha).
  * `finite_difference`: eq. 8 along u: eps = fd_eps / ||u||_2 (global L2
    norm), (grad_alpha L_train(w + eps u) - grad_alpha L_train(w - eps u)) /
    (2 eps) for the product; for plain SGD the points w -+ fd_eps v / ||v||
    are the paper's.
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

  `unrolled` vs `exact_hvp`: the same derivative, by the chain rule through
  w' = U(g(w, alpha)): equal to round-off for plain SGD and for any optax
  virtual step, clipped or adaptive, because `exact_hvp` pulls v back through
  the step's own update (a vjp of an elementwise map, negligible next to the
  products). With an optimizer `xi` is unused: the step's learning rate is
  the schedule's. For the reference's step (momentum, coupled decay, no clip)
  u = -lr v, eq. 7 with xi = lr.

  Args:
    method: one of `METHODS`.
    train_loss: `(params, alphas, batch) -> scalar` (`(scalar, aux)` with
      `has_aux`); a mean over the batch when used with `axis_name`.
    val_loss: likewise, evaluated on `val_batch`.
    params: pytree of float arrays, the weights w.
    alphas: pytree of float arrays, the architecture parameters.
    train_batch: any pytree `train_loss` accepts.
    val_batch: any pytree `val_loss` accepts.
    xi: virtual-step learning rate of the plain SGD step w - xi g (the eq. 7
      coefficient); `unrolled`, `exact_hvp` and `finite_difference` need it
      or an optimizer (which then forms w' and makes xi unused); the fallback
      for `neumann_lr`; otherwise ignored.
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
  est = estimator(method)
  opts = options(method, xi=xi, optimizer=optimizer, opt_state=opt_state, fd_eps=fd_eps,
                 neumann_terms=neumann_terms, neumann_lr=neumann_lr, cg_iters=cg_iters,
                 cg_damping=cg_damping, weight_decay=weight_decay,
                 unroll_solver=unroll_solver, axis_name=axis_name)
  check_args(method, params, alphas, opts)
  train = wrap_loss(train_loss, "train_loss", has_aux)
  val = wrap_loss(val_loss, "val_loss", has_aux)
  with depthwise.compile_light(est.second_order):
    g, aux, info = est.fn(train, val, params, alphas, train_batch, val_batch, opts)
  out = (g, aux) if has_aux else g
  return (out, info) if return_info else out


def estimator_options(arch_cfg, weight_decay: float = 0.0) -> dict:
  """The `hypergrad.arch_grad` settings an `arch` config block holds.

  Args:
    arch_cfg: the config's `arch` block.
    weight_decay: the weight optimiser's coupled decay (`optim.weight_decay`):
      part of the inner objective, so of the implicit methods' Hessian.

  Returns:
    {'fd_eps', 'neumann_terms', 'neumann_lr' (None: use xi), 'cg_iters',
    'cg_damping', 'unroll_solver', 'weight_decay'}, defaults filled in for
    older configs.
  """
  return dict(fd_eps=arch_cfg.get("fd_eps", 0.01),
              neumann_terms=arch_cfg.get("neumann_terms", 20),
              neumann_lr=(arch_cfg.get("neumann_lr", 0.0) or None),
              cg_iters=arch_cfg.get("cg_iters", 20),
              cg_damping=arch_cfg.get("cg_damping", 1e-3),
              unroll_solver=arch_cfg.get("unroll_solver", False),
              weight_decay=float(weight_decay or 0.0))
