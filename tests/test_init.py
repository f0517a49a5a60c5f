"""`model.init`: modern PyTorch's default initialisation, or that of PyTorch 0.3 (issue 11, 4).

The bounds are PyTorch's own formulas, written out here: PyTorch 0.3's
`_ConvNd.reset_parameters` draws U(+-1/sqrt(in_channels * k * k)) whatever the
groups, and `_BatchNorm.reset_parameters` draws the affine scale from U(0, 1);
PyTorch >= 0.4's kaiming_uniform(a=sqrt(5)) gives U(+-1/sqrt(in_channels/groups
* k * k)) and scales of one.
"""
import functools
import math

import jax
import numpy as np
import pytest
from flax import traverse_util

import helpers
from jdarts import model_registry
from jdarts.config_lib import ConfigError

C = 8  # channels of the first cells: 72 draws per 3x3 depthwise kernel


@functools.lru_cache(maxsize=None)
def _leaves(init):
  space = helpers.make_space(helpers.tiny_model(init_channels=C, init=init),
                             image_shape=(8, 8, 3))
  params = space.init(jax.random.PRNGKey(0), space.example_batch(2))
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def _within(w, bound):
  """Every draw inside +-bound, and the largest near it (P(miss) < 0.9^n)."""
  top = np.abs(w).max()
  return top <= bound * (1 + 1e-6) and top > 0.9 * bound


@pytest.mark.parametrize("init", ["pytorch", "pytorch0.3"])
def test_conv_kernels_follow_pytorch_bounds(init):
  leaves = _leaves(init)
  depthwise = dense = 0
  for path, w in leaves.items():
    if not path.endswith("kernel") or w.ndim != 4:
      continue
    k, _, c_in_per_group, c_out = w.shape
    if c_in_per_group == 1 and c_out > 1:  # depthwise: groups = in_channels = c_out
      groups, in_channels = c_out, c_out
      depthwise += 1
    else:
      groups, in_channels = 1, c_in_per_group
      dense += 1
    if init == "pytorch0.3":
      bound = 1 / math.sqrt(in_channels * k * k)
    else:
      bound = 1 / math.sqrt(in_channels / groups * k * k)
    assert _within(w, bound), (path, np.abs(w).max(), bound)
  assert depthwise >= 4 and dense >= 4


def test_affine_batchnorm_scales():
  modern, old = _leaves("pytorch"), _leaves("pytorch0.3")
  scales = [p for p in modern if p.endswith("scale")]
  assert scales  # the stem's affine BatchNorm
  for p in scales:
    np.testing.assert_array_equal(modern[p], 1.0)
    assert old[p].min() >= 0 and old[p].max() < 1 and old[p].std() > 0.1


def test_evaluation_network_takes_init():
  from jdarts import genotypes
  cfg = dict(name="cifar", init_channels=4, layers=2, auxiliary=False, init="pytorch0.3")
  model_registry.validate_config(cfg)
  net = model_registry.build_model(cfg, 10, genotype=genotypes.DARTS_V2)
  variables = model_registry.init_variables(net, jax.random.PRNGKey(0), (8, 8, 3))
  flat = traverse_util.flatten_dict(variables["params"])
  scales = [np.asarray(v) for k, v in flat.items() if k[-1] == "scale"]
  assert scales and all(s.min() >= 0 and s.max() < 1 for s in scales)
  assert np.std(np.concatenate(scales)) > 0.1


@pytest.mark.parametrize("model, match", [
    (dict(init="pytorch0.4"), "model.init='pytorch0.4'"),
    (dict(init="pytorch0.3", batch_edges=True), "batch_edges"),
])
def test_bad_init_is_one_line(model, match):
  from jdarts.spaces import darts_cnn  # noqa: F401  (registers the space)
  from jdarts import spaces
  with pytest.raises(ConfigError, match=match):
    spaces.space_class("darts_cnn").validate_config(helpers.tiny_model(**model))
  if "batch_edges" not in model:
    with pytest.raises(ConfigError, match=match):
      model_registry.validate_config(dict(name="cifar", **model))
