"""Tests for jdarts.solvers: closed forms on small explicit matrices.

The solvers' use inside the implicit hypergradients is tested in
test_hypergrad.py; here are the cases that need a hand-made operator
(non-finite products, exact convergence, pytree right-hand sides).
"""
import jax.numpy as jnp
import numpy as np
import pytest

from jdarts import solvers


def _matrix_hvp(a):
  """v -> A v on the pytree {'u': (2,), 'v': (3,)}, i.e. a 5x5 A."""
  a = jnp.asarray(a)

  def hvp(tree):
    flat = jnp.concatenate([tree["u"], tree["v"]])
    out = a @ flat
    return {"u": out[:2], "v": out[2:]}

  return hvp


def _tree(x):
  return {"u": jnp.asarray(x[:2]), "v": jnp.asarray(x[2:])}


def _vec(tree):
  return np.concatenate([np.asarray(tree["u"]), np.asarray(tree["v"])])


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("unroll", [False, True])
def test_cg_solves_damped_spd_system_exactly(unroll):
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a = q @ np.diag([0.5, 1.0, 2.0, 4.0, 8.0]) @ q.T
  b = rng.normal(size=5)
  x, info = solvers.cg_solve(_matrix_hvp(a), _tree(b), 8, damping=0.25,
                             unroll=unroll)
  np.testing.assert_allclose(_vec(x), np.linalg.solve(a + 0.25 * np.eye(5), b),
                             rtol=0, atol=1e-12)
  # After 5 steps of a 5x5 system the residual is (round-off) zero; the last
  # steps may freeze on an exactly zero residual, unflagged.
  assert 5 <= int(info["iterations"]) <= 8
  assert not bool(info["negative_curvature"]) and not bool(info["diverged"])
  assert float(info["residual_norm"]) < 1e-12


@pytest.mark.usefixtures("x64")
def test_zero_rhs_is_converged_not_flagged():
  hvp = _matrix_hvp(np.diag([1.0, -1.0, 2.0, 3.0, 4.0]))
  for solve in (lambda b: solvers.cg_solve(hvp, b, 4),
                lambda b: solvers.neumann_solve(hvp, b, 4, 0.1)):
    x, info = solve(_tree(np.zeros(5)))
    assert np.all(_vec(x) == 0)
    assert not bool(info["negative_curvature"]) and not bool(info["diverged"])


@pytest.mark.usefixtures("x64")
def test_non_finite_products_are_flagged_and_not_returned():
  """An HVP that turns NaN on its second call: both keep the last good x."""
  a = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
  b = np.arange(1.0, 6.0)
  good = _matrix_hvp(a)

  def make_hvp():
    calls = []

    def hvp(tree):
      calls.append(None)  # counts traces: the solvers here run unrolled
      out = good(tree)
      return out if len(calls) < 2 else {k: v * jnp.nan for k, v in out.items()}

    return hvp

  x, info = solvers.cg_solve(make_hvp(), _tree(b), 5, damping=0.0, unroll=True)
  np.testing.assert_allclose(_vec(x), (b @ b) / (b @ a @ b) * b, rtol=1e-14)
  assert bool(info["diverged"]) and int(info["iterations"]) == 1
  x, info = solvers.neumann_solve(make_hvp(), _tree(b), 5, 0.1, unroll=True)
  np.testing.assert_allclose(_vec(x), 0.1 * (b + (b - 0.1 * a @ b)), rtol=1e-14)
  assert bool(info["diverged"]) and int(info["iterations"]) == 1
