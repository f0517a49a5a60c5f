"""Matrix-free linear solvers over pytrees, for implicit hypergradients.

The implicit-function-theorem hypergradient (`jdarts.hypergrad`, methods
`implicit_neumann` / `implicit_cg`) needs x ~= A^{-1} b for the Hessian
A = H_ww (+ weight decay) of the training loss, of which only products
`hvp(v) = A v` are available. Away from a minimum of a non-convex loss A is
indefinite, so both solvers here guard against the two ways that goes wrong:

* `cg_solve`: truncated conjugate gradient (the Newton-CG / Steihaug rule):
  it stops at the first direction of non-positive curvature and returns the
  iterate reached so far, which is finite and reduces the quadratic model.
* `neumann_solve`: a truncated Neumann series, which diverges when
  lr * lambda falls outside (0, 2) for some eigenvalue lambda of A; it detects
  growing terms and returns the partial sum up to the last shrinking term.

Both return `(x, info)` with `info` a dict of JAX scalars (jit- and
pmap-compatible, computed without Python control flow on traced values):

* `iterations` (int32): solver steps (CG) or series terms after the first
  (Neumann) that the returned x contains.
* `negative_curvature` (bool): CG met p.Ap <= 0 and stopped there.
* `diverged` (bool): a non-finite value (CG, Neumann) or a Neumann term larger
  than `growth_limit` times the first; x is the last good partial result.
* `residual_norm`: ||b - A x||_2 of the returned x. It costs one more product
  after the loop, which XLA removes under `jax.jit` when the caller drops it.

`unroll=True` traces the iterations one by one instead of a `lax.fori_loop`
(same arithmetic, see `_loop`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any
Hvp = Callable[[PyTree], PyTree]

# 1e-3 is about 3x the DARTS weight decay (3e-4): along the flat directions of
# an over-parameterised supernet (Hessian eigenvalues ~0), where undamped CG
# amplifies b by up to 1/wd, it caps the gain at 1/(wd + 1e-3) ~ 770, while a
# direction of curvature lambda changes by a factor lambda / (lambda + 1e-3),
# i.e. under 1% for lambda >= 0.1.
CG_DAMPING = 1e-3
# For symmetric A and lr * lambda in [0, 2] for every eigenvalue, ||I - lr A||
# <= 1, so no term exceeds the first; round-off cannot double it, so a term
# twice the first proves the series diverges.
NEUMANN_GROWTH_LIMIT = 2.0


def axpy(a, x: PyTree, y: PyTree) -> PyTree:
  """Returns a * x + y leafwise, keeping y's dtypes."""
  return jax.tree.map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


def _vdot(x: PyTree, y: PyTree):
  return sum(jnp.vdot(a, b) for a, b in
             zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def _norm(x: PyTree):
  return jnp.sqrt(_vdot(x, x))


def _select(pred, a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(lambda u, v: jnp.where(pred, u, v), a, b)


def _info(hvp: Hvp, b: PyTree, x: PyTree, iterations, negative_curvature,
          diverged) -> dict:
  return dict(iterations=jnp.asarray(iterations, jnp.int32),
              negative_curvature=jnp.asarray(negative_curvature, bool),
              diverged=jnp.asarray(diverged, bool),
              residual_norm=_norm(axpy(-1.0, hvp(x), b)))


def empty_info() -> dict:
  """The `info` of a method that solves no linear system (all zero / False)."""
  return dict(iterations=jnp.zeros((), jnp.int32),
              negative_curvature=jnp.zeros((), bool),
              diverged=jnp.zeros((), bool),
              residual_norm=jnp.zeros(()))


def _loop(n, body, init, unroll):
  """`lax.fori_loop(0, n, body, init)`, or the same steps traced one by one.

  Unrolled, XLA:CPU runs the Hessian-vector products ~7x faster: convolutions
  inside a while-loop body miss its fast paths (jax-ml/jax#12868); the price
  is n copies of the graph to compile, superlinear in time and memory (C=8,
  3 cells, 5 CG steps: over 25 min and 20 GB on XLA:CPU).
  """
  if not unroll:
    return jax.lax.fori_loop(0, n, body, init)
  for i in range(n):
    init = body(i, init)
  return init


def neumann_solve(hvp: Hvp, b: PyTree, terms: int, lr, unroll: bool = False,
                  *, growth_limit=NEUMANN_GROWTH_LIMIT):
  """A^{-1} b ~= lr * sum_{k=0}^{terms} (I - lr A)^k b, stopped if it diverges.

  The series converges iff the spectral radius of I - lr A is below 1, i.e.
  0 < lr * lambda < 2 for every eigenvalue lambda of A: lr < 2 / lambda_max,
  and A positive definite. When a term p_k = (I - lr A)^k b is non-finite or
  its norm exceeds `growth_limit * ||b||`, the series is declared diverged and
  the result is the partial sum up to the last term whose norm did not grow
  (for a contractive series terms never grow, so this is where the unstable
  eigendirections start to dominate; at worst it is lr * b).

  Args:
    hvp: v -> A v for a symmetric A, on pytrees shaped like `b`.
    b: the right-hand side, a pytree of float arrays.
    terms: K >= 0 (static); the series runs k = 0..K (K products with A).
    lr: the step size eta, a Python or traced scalar.
    unroll: trace the K steps one by one instead of a `lax.fori_loop`.
    growth_limit: a term above this multiple of ||b|| means divergence.

  Returns:
    `(x, info)`: x shaped like `b`, `info` as in the module docstring
    (`negative_curvature` is always False).
  """
  b_norm = _norm(b)
  zero = jnp.zeros((), jnp.int32)
  false = jnp.zeros((), bool)

  def body(_, carry):
    p, acc, best, best_k, prev_norm, k, diverged = carry
    p_new = axpy(-lr, hvp(p), p)
    norm = _norm(p_new)
    # `~(norm <= limit)` is also True for NaN.
    diverged = diverged | ~(norm <= growth_limit * b_norm)
    live = ~diverged
    acc = _select(live, jax.tree.map(jnp.add, acc, p_new), acc)
    shrinking = live & (norm <= prev_norm)
    best = _select(shrinking, acc, best)
    best_k = jnp.where(shrinking, k + 1, best_k)
    # Frozen once diverged, so nothing later overflows or turns NaN.
    p = _select(live, p_new, p)
    prev_norm = jnp.where(live, norm, prev_norm)
    return p, acc, best, best_k, prev_norm, k + live, diverged

  init = (b, b, b, zero, b_norm, zero, false)
  _, acc, best, best_k, _, k, diverged = _loop(terms, body, init, unroll)
  x = jax.tree.map(lambda a: (lr * a).astype(a.dtype),
                   _select(diverged, best, acc))
  return x, _info(hvp, b, x, jnp.where(diverged, best_k, k), False, diverged)


def cg_solve(hvp: Hvp, b: PyTree, iters: int, damping=CG_DAMPING,
             unroll: bool = False):
  """Solves (A + damping I) x = b by truncated conjugate gradient.

  Plain CG from x = 0, except that it stops (the Newton-CG rule of Nocedal &
  Wright, Alg. 7.1, i.e. Steihaug's CG without a trust region) at the first
  search direction p with p.(A + damping I)p <= 0 and returns the current
  iterate: up to there each step lowered the quadratic 0.5 x.Ax - b.x, past
  there it has no minimiser. On the first step that iterate is x = 0, so the
  implicit hypergradient falls back to the first-order one. A non-finite
  product also stops it, with `diverged` set. An exactly zero residual
  (converged) freezes the iterate without a flag.

  Args:
    hvp: v -> A v for a symmetric A, on pytrees shaped like `b`.
    b: the right-hand side, a pytree of float arrays.
    iters: number of CG steps (static, >= 1); each costs one product.
    damping: lambda >= 0 added to A's diagonal; see `CG_DAMPING` for the
      default's rationale. A Python or traced scalar.
    unroll: trace the steps one by one instead of a `lax.fori_loop`.

  Returns:
    `(x, info)`: x shaped like `b`, `info` as in the module docstring, its
    `residual_norm` for the damped system.
  """
  matvec = lambda v: axpy(damping, v, hvp(v))
  zero = jnp.zeros((), jnp.int32)
  false = jnp.zeros((), bool)

  def body(_, carry):
    x, r, p, rs, k, negative, diverged = carry
    ap = matvec(p)
    pap = _vdot(p, ap)
    # rs == 0: converged, freeze quietly; a NaN rs (non-finite b) goes on to
    # fail the finiteness check below and is flagged.
    live = ~(negative | diverged) & (rs != 0)
    negative_now = live & (pap <= 0)
    alpha = rs / jnp.where(pap > 0, pap, jnp.ones_like(pap))
    x_new = axpy(alpha, p, x)
    r_new = axpy(-alpha, ap, r)
    rs_new = _vdot(r_new, r_new)
    finite = (jnp.isfinite(pap) & jnp.isfinite(rs_new)
              & jnp.isfinite(_vdot(x_new, x_new)))
    take = live & ~negative_now & finite
    beta = rs_new / jnp.where(live, rs, jnp.ones_like(rs))
    p_new = axpy(beta, p, r_new)
    x, r, p = _select(take, (x_new, r_new, p_new), (x, r, p))
    return (x, r, p, jnp.where(take, rs_new, rs), k + take,
            negative | negative_now, diverged | (live & ~negative_now & ~finite))

  x0 = jax.tree.map(jnp.zeros_like, b)
  init = (x0, b, b, _vdot(b, b), zero, false, false)
  x, _, _, _, k, negative, diverged = _loop(iters, body, init, unroll)
  return x, _info(matvec, b, x, k, negative, diverged)
