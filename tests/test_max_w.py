"""Max-W weighting (sharp_darts.txt sec. 4.3, eq. 3): what is exactly 1 and what is exactly 0.

With w = softmax(alpha) and m = argmax(w), eq. 3 gives weight_i = 1 - w_m + w_i.
Analytically (for a strict maximum, so m is locally constant):

* weight_m = 1 - w_m + w_m = 1 for every alpha near the current one, so the
  whole Jacobian row d weight_m / d alpha is zero: the max op's output enters
  the edge with weight 1 and sends no gradient to any alpha. This is the
  paper's "output_i = 1 * op_i(input_i) | i = i_max".
* For i != m, d weight_i / d alpha_j = dw_i/dalpha_j - dw_m/dalpha_j with
  dw_i/dalpha_j = w_i (delta_ij - w_j). In particular d weight_i / d alpha_m =
  -w_i w_m - w_m (1 - w_m) = -w_m weight_i, which is not zero: the loss
  gradient of alpha_m itself is generally nonzero (the other ops' weights move
  with it), so the paper's "the alpha underlying w_max will remain unchanged"
  holds for the max op's own weight, not for alpha_m's total gradient.

The tests check both claims in float64 against the closed form above and
central finite differences, and run a Max-W search step on the DARTS CNN space.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from jdarts import cli
from jdarts import mixing


def _analytic_jacobian(alpha):
  w = np.exp(alpha - alpha.max())
  w /= w.sum()
  m = int(np.argmax(w))
  dw = np.diag(w) - np.outer(w, w)       # dw_i / dalpha_j
  return dw - dw[m][None, :], m, w


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_op_weight_is_one_and_its_jacobian_row_zero(seed):
  alpha = np.random.RandomState(seed).normal(size=(8,)) * 2.0
  weights = np.asarray(mixing.mix("max_w", jnp.asarray(alpha)))
  J_ad = np.asarray(jax.jacfwd(lambda a: mixing.mix("max_w", a))(jnp.asarray(alpha)))
  J_an, m, w = _analytic_jacobian(alpha)
  assert weights[m] == 1.0                               # exactly, not approximately
  np.testing.assert_allclose(weights, 1 - w.max() + w, rtol=1e-14)
  assert np.all(J_ad[m] == 0.0)                          # the max op's row: exactly zero
  np.testing.assert_allclose(J_ad, J_an, atol=1e-14)
  # Central differences, independent of autodiff (error ~ eps^2).
  eps = 1e-6
  J_fd = np.stack([(np.asarray(mixing.mix("max_w", jnp.asarray(alpha + eps * e))) -
                    np.asarray(mixing.mix("max_w", jnp.asarray(alpha - eps * e)))) / (2 * eps)
                   for e in np.eye(8)], axis=1)
  np.testing.assert_allclose(J_fd, J_an, atol=1e-9)
  # What is not zero: alpha_m moves the other ops' weights, d weight_i/d alpha_m = -w_m weight_i.
  others = np.arange(8) != m
  np.testing.assert_allclose(J_ad[others, m], -w[m] * weights[others], rtol=1e-12)
  assert np.all(J_ad[others, m] < 0)


def test_alpha_gradient_of_a_mixed_edge_ignores_the_max_op_output():
  """d loss / d alpha for loss = sum_i weight_i * y_i does not depend on y_m."""
  alpha = jnp.asarray([0.3, 1.7, -0.4, 0.9])            # op 1 is the max
  y = jnp.asarray([2.0, -3.0, 0.5, 1.0])

  def loss(a, outs):
    return jnp.sum(mixing.mix("max_w", a) * outs)
  g1 = jax.grad(loss)(alpha, y)
  g2 = jax.grad(loss)(alpha, y.at[1].set(123.0))        # change only the max op's output
  np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))
  assert float(jnp.abs(g1[1])) > 0.0                     # yet alpha_max's gradient is not zero


@pytest.mark.slow  # minutes of second-order compilation on 2 CPU cores; --runslow
def test_darts_cnn_search_with_max_w_runs(tmp_path):
  """A Max-W search (first order) on the DARTS CNN space runs through the CLI."""
  with jax.enable_x64(False):
    config = helpers.write_tiny_config(tmp_path, 'c.model.mixing = "max_w"',
                                       "c.max_steps = 2", "c.checkpoint.enabled = False")
    rc = cli.main(["search", f"--config={config}", f"--workdir={tmp_path / 'run'}"])
  assert rc == 0
  assert (tmp_path / "run" / "genotype.json").exists()
