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
* `Monitor`: what the search loop runs every N epochs on one fixed
  validation batch: the dominant eigenvalue and, when that one is negative,
  the largest (power iteration on the shifted H - lambda I), which DARTS-ES
  watches (curvature growing in some direction).
* `EarlyStop`: the DARTS-ES rule, stop at epoch i when
  mean(lambda over epochs i-2k+1..i-k) / mean(lambda over i-k+1..i) < T and
  keep the genotype of epoch i-k (the paper's T=0.75, k=5, quoted from memory
  of its sec. 4.3: the paper is not among the project's reference papers).

`fn(alphas) -> scalar` is the validation loss with the weights fixed, e.g.
`lambda a: space.loss(params, a, val_batch, rng, carry)[0]`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jdarts import depthwise
from jdarts import parallel
from jdarts.config_lib import ConfigError


def hvp(fn: Callable, alphas, v):
  """H(alphas) @ v for the Hessian of scalar `fn` (pytrees shaped like `alphas`).

  Traced with `depthwise.compile_light()`, as the second-order hypergradients.
  """
  with depthwise.compile_light():
    return jax.jvp(jax.grad(fn), (alphas,), (v,))[1]


def power_iteration(matvec: Callable, v0: jnp.ndarray, *, iters: int = 50,
                    tol: float = 1e-6) -> Tuple[float, int]:
  """Eigenvalue of largest magnitude of the symmetric map `matvec` (flat vectors).

  Returns:
    (Rayleigh quotient of the last unit vector, matvecs used); stops when the
    quotient changes by less than tol * |lambda|.
  """
  v = v0 / jnp.linalg.norm(v0)
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


def dominant_eigenvalue(fn: Callable, alphas, rng: jnp.ndarray, *, iters: int = 50,
                        tol: float = 1e-6) -> Tuple[float, int]:
  """The Hessian's eigenvalue of largest magnitude by power iteration on exact HVPs.

  Args:
    fn: `alphas -> scalar loss`.
    alphas: the point (a pytree of float arrays, N numbers in all).
    rng: key of the random start vector.
    iters, tol: see `power_iteration`.

  Returns:
    (eigenvalue, HVPs used).
  """
  flat, unravel = ravel_pytree(alphas)
  matvec = parallel.jit(lambda x: ravel_pytree(hvp(fn, alphas, unravel(x)))[0])
  return power_iteration(matvec, jax.random.normal(rng, flat.shape, flat.dtype),
                         iters=iters, tol=tol)


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


def validate(c) -> None:
  """ConfigError naming a bad key of the `collapse` block (see config_lib's defaults)."""
  def need(ok, key, what):
    if not ok:
      raise ConfigError(f"collapse.{key} must be {what}, got {c.get(key)!r}.")
  is_int = lambda k, low: isinstance(c.get(k), int) and not isinstance(c.get(k), bool) \
      and c.get(k) >= low
  need(is_int("every_epochs", 0), "every_epochs", "an integer >= 0 (0: off)")
  need(is_int("power_iters", 1), "power_iters", "an integer >= 1")
  need(is_int("window", 1), "window", "an integer >= 1 (DARTS-ES: 5)")
  need(isinstance(c.get("threshold"), float) and 0 < c.threshold <= 1, "threshold",
       "a float in (0, 1] (DARTS-ES: 0.75)")
  need(isinstance(c.get("tol"), float) and c.tol >= 0, "tol", "a float >= 0")
  need(not c.early_stop or c.every_epochs, "early_stop",
       "False unless collapse.every_epochs > 0 (it needs the eigenvalues)")


class Monitor:
  """The eigenvalue every `every_epochs` epochs on one fixed validation batch; DARTS-ES.

  Args:
    c: the `collapse` block.
    space: the search space (its `loss`, `init_carry`).
    batch: a fixed held-out batch (the first search-validation batch), so
      successive measurements differ only by the weights and alphas.
    batch_size: rows of `batch` (for `init_carry`).
    seed: the run's seed (start vectors, the loss's rng).
  """

  def __init__(self, c, space, batch, batch_size: int, seed: int):
    self.c, self.batch, self.seed = c, batch, seed
    self.carry = space.init_carry(batch_size)
    self.stop_rule = EarlyStop(c.window, c.threshold) if c.early_stop else None
    self.measured: List[Tuple[int, object]] = []  # (step, alphas) of each measurement
    key = jax.random.PRNGKey(seed)

    def matvec(params, alphas, batch, carry, x):
      _, unravel = ravel_pytree(alphas)
      fn = lambda a: space.loss(params, a, batch, key, carry)[0]
      return ravel_pytree(hvp(fn, alphas, unravel(x)))[0]
    self._matvec = parallel.jit(matvec)  # compiled once: every argument is an array

    def loss_flat(params, alphas, batch, carry, x):
      _, unravel = ravel_pytree(alphas)
      return space.loss(params, unravel(x), batch, key, carry)[0]
    self._hessian = parallel.jit(jax.hessian(loss_flat, argnums=4))

  def due(self, epoch: int) -> bool:
    return self.c.every_epochs > 0 and epoch > 0 and epoch % self.c.every_epochs == 0

  def __call__(self, step: int, params, alphas) -> Tuple[dict, bool]:
    """(row, stop now?); the row holds 'dominant_eigenvalue' (largest magnitude),
    'top_eigenvalue' (largest; what DARTS-ES watches), 'power_iters' (HVPs) and,
    with `spectrum`, the explicit Hessian's 'max_eigenvalue' and 'min_eigenvalue'.
    """
    flat, _ = ravel_pytree(alphas)
    mv = lambda x: self._matvec(params, alphas, self.batch, self.carry, x)
    v0 = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(self.seed), step),
                           flat.shape, flat.dtype)
    lam, n = power_iteration(mv, v0, iters=self.c.power_iters, tol=self.c.tol)
    top = lam
    if lam < 0:  # the largest (most positive) one: power iteration on H - lam I >= 0
      shifted, n2 = power_iteration(lambda x: mv(x) - lam * x, v0,
                                    iters=self.c.power_iters, tol=self.c.tol)
      top, n = shifted + lam, n + n2
    row = {"dominant_eigenvalue": lam, "top_eigenvalue": top, "power_iters": float(n)}
    if self.c.spectrum:
      h = np.asarray(self._hessian(params, alphas, self.batch, self.carry, flat), np.float64)
      eig = np.linalg.eigvalsh((h + h.T) / 2)
      row.update(max_eigenvalue=float(eig[-1]), min_eigenvalue=float(eig[0]))
    self.measured.append((int(step), alphas))
    stop = self.stop_rule is not None and self.stop_rule.add(top)
    return row, stop

  def kept(self) -> Tuple[int, object]:
    """(step, alphas) DARTS-ES keeps: the measurement `window` before the last."""
    return self.measured[self.stop_rule.keep_index]

  def state_dict(self) -> dict:
    """What a resumed run needs to decide as this one would: JSON-serialisable.

    With DARTS-ES on: the eigenvalues it has seen and the (step, alphas) of
    every measurement (the genotype it keeps is one of them), alphas as their
    leaves' nested lists (float32 round-trips exactly through JSON); without
    it, nothing.
    """
    if self.stop_rule is None:  # measurements only: nothing decides on them later
      return {}
    return {"values": list(self.stop_rule.values),
            "measured": [[step, [np.asarray(x).tolist() for x in
                                 jax.tree_util.tree_leaves(alphas)]]
                         for step, alphas in self.measured]}

  def load_state_dict(self, d: dict, alphas_like) -> None:
    """Restores `state_dict()`; `alphas_like`: an alphas tree of the run (structure, dtypes)."""
    leaves, treedef = jax.tree_util.tree_flatten(alphas_like)
    self.measured = [
        (int(step), jax.tree_util.tree_unflatten(
            treedef, [np.asarray(v, np.asarray(like).dtype) for v, like in zip(vals, leaves)]))
        for step, vals in d.get("measured", [])]
    if self.stop_rule is not None and d.get("values") is not None:
      self.stop_rule.values = [float(v) for v in d["values"]]
