"""Collapse diagnostics: the curvature of the validation loss in the alphas (RobustDARTS).

Zela et al. 2020 ("Understanding and Robustifying Differentiable Architecture
Search", ICLR) find that DARTS degenerates (parameter-free operations taking
over) when the dominant eigenvalue of the Hessian of the validation loss with
respect to the alphas grows, and propose DARTS-ES: stop early when it rises.

* `hvp(fn, alphas, v)`: exact Hessian-vector product (forward-over-reverse:
  `jvp` of `grad`), no finite differences.
* `dominant_eigenvalue(fn, alphas, ...)`: power iteration on `hvp`, giving the
  eigenvalue of largest magnitude (Rayleigh quotient of the converged vector).
* `hessian_eigenvalues(fn, alphas)`: the whole spectrum from the explicit
  Hessian (`jax.hessian` of the flattened alphas); the alphas are small
  (DARTS: 2 x 14 x 8 = 224 numbers), so this is affordable and checks the
  power iteration.
* `EarlyStop`: the DARTS-ES rule, stop at epoch i when
  mean(lambda over epochs i-2k+1..i-k) / mean(lambda over i-k+1..i) < T and
  keep the genotype of epoch i-k (the paper's T=0.75, k=5, quoted from memory
  of its sec. 4.3: the paper is not in /work/shared/papers).

`fn(alphas) -> scalar` is the validation loss with the weights fixed, e.g.
`lambda a: space.loss(params, a, val_batch, rng, carry)[0]`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def hvp(fn: Callable, alphas, v):
  """H(alphas) @ v for the Hessian of scalar `fn` (pytrees shaped like `alphas`)."""
  return jax.jvp(jax.grad(fn), (alphas,), (v,))[1]


def dominant_eigenvalue(fn: Callable, alphas, rng: jnp.ndarray, *, iters: int = 50,
                        tol: float = 1e-6) -> Tuple[float, int]:
  """The Hessian's eigenvalue of largest magnitude by power iteration on exact HVPs.

  Args:
    fn: `alphas -> scalar loss`.
    alphas: the point (a pytree of float arrays, N numbers in all).
    rng: key of the random start vector.
    iters: at most this many HVPs.
    tol: stop when the Rayleigh quotient changes by less than tol * |lambda|.

  Returns:
    (eigenvalue, HVPs used).
  """
  flat, unravel = ravel_pytree(alphas)
  matvec = jax.jit(lambda x: ravel_pytree(hvp(fn, alphas, unravel(x)))[0])
  v = jax.random.normal(rng, flat.shape, flat.dtype)
  v = v / jnp.linalg.norm(v)
  lam, n = 0.0, 0
  for n in range(1, iters + 1):
    hv = matvec(v)
    new = float(jnp.vdot(v, hv))  # Rayleigh quotient, v of unit norm
    norm = float(jnp.linalg.norm(hv))
    if norm == 0.0:
      return 0.0, n
    v = hv / norm
    if n > 1 and abs(new - lam) <= tol * max(abs(new), 1e-12):
      return new, n
    lam = new
  return lam, n


def hessian_eigenvalues(fn: Callable, alphas) -> np.ndarray:
  """Every eigenvalue (ascending) of the explicit Hessian of `fn` at `alphas`."""
  flat, unravel = ravel_pytree(alphas)
  h = jax.hessian(lambda x: fn(unravel(x)))(flat)
  h = np.asarray(h, np.float64)
  return np.linalg.eigvalsh((h + h.T) / 2)


class EarlyStop:
  """DARTS-ES: stop when the window-averaged dominant eigenvalue rises by 1/T.

  Args:
    window: k, epochs per average.
    threshold: T; stop when mean(previous window) / mean(current window) < T.
  """

  def __init__(self, window: int = 5, threshold: float = 0.75):
    self.window, self.threshold = window, threshold
    self.values: List[float] = []

  def add(self, value: float) -> bool:
    """Records one epoch's eigenvalue; True when the search should stop now."""
    self.values.append(float(value))
    k = self.window
    if len(self.values) < 2 * k:
      return False
    prev = float(np.mean(self.values[-2 * k:-k]))
    cur = float(np.mean(self.values[-k:]))
    return cur > 0 and prev / cur < self.threshold

  @property
  def keep_index(self) -> Optional[int]:
    """Index (0-based, among the recorded epochs) of the genotype to keep: i - k."""
    return len(self.values) - 1 - self.window if self.values else None
