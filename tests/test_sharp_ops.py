"""SharpSepConv and the sharpDARTS primitives (sharp_darts.txt Fig. 1, 3 and Table 1).

Parameter counts are written out by hand from Fig. 3's layer list (k x k
depthwise on C_in, 1x1 C_in -> c_mid, BN(c_mid), k x k depthwise on c_mid,
1x1 c_mid -> C_out, BN(C_out)); the forward pass is compared with the same
layers written directly with `lax.conv_general_dilated`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jdarts import ops
from jdarts.spaces.darts_cnn import primitives as darts_primitives
from jdarts.spaces.sharp import primitives

C = 16


def sharp_count(k, c_mid, c_in=C, c_out=C, affine=True):
  return (k * k * c_in + c_in * c_mid + k * k * c_mid + c_mid * c_out +
          (2 * (c_mid + c_out) if affine else 0))


FR = 2 * C * (C // 2) + 2 * C     # FactorizedReduce: two 1x1 convs C -> C/2, affine BN(C)
HAND = {  # name: (params at stride 1, params at stride 2), affine
    "none": (0, 0),
    "avg_pool_3x3": (0, 0),
    "max_pool_3x3": (0, 0),
    "skip_connect": (0, FR),
    "sep_conv_3x3": (sharp_count(3, C),) * 2,
    "dil_conv_3x3": (sharp_count(3, C),) * 2,
    "flood_conv_3x3": (sharp_count(3, 4 * C),) * 2,
    "dil_flood_conv_3x3": (sharp_count(3, 4 * C),) * 2,
    "choke_conv_3x3": (sharp_count(3, 32),) * 2,
    "dil_choke_conv_3x3": (sharp_count(3, 32),) * 2,
}


def test_table1_is_the_namespace_order():
  assert primitives.PRIMITIVES == tuple(HAND)
  assert set(primitives.PRIMITIVES) <= set(primitives.OPS.names())
  # sep_conv_3x3 here is a SharpSepConv block, not DARTS's SepConv
  assert primitives.OPS.get("sep_conv_3x3") is not darts_primitives.OPS.get("sep_conv_3x3")


@pytest.mark.parametrize("stride", [1, 2])
def test_table1_parameter_counts_and_shapes(stride):
  x = jax.ShapeDtypeStruct((2, 8, 8, C), jnp.float32)
  for name, counts in HAND.items():
    op = darts_primitives.make_op(name, C, stride, True, registry=primitives.OPS)
    params = jax.eval_shape(op.init, jax.random.PRNGKey(0), x)
    assert ops.count_params(params) == counts[stride - 1], name
    out = jax.eval_shape(op.apply, params, x)
    assert out.shape == (2, 8 // stride, 8 // stride, C), name
    info = darts_primitives.op_info(name, primitives.OPS)
    assert info.parameter_free == (counts[0] == 0), name
    assert info.search_bn == ("pool" in name), name


def test_sharp_sep_conv_layer_shapes():
  op = ops.SharpSepConv(24, kernel_size=3, stride=2, dilation=2, C_mid_mult=4)
  p = jax.eval_shape(op.init, jax.random.PRNGKey(0),
                     jax.ShapeDtypeStruct((1, 8, 8, 8), jnp.float32))["params"]
  shapes = jax.tree_util.tree_map(lambda a: a.shape, p)
  assert shapes["DepthwiseConv_0"]["conv"]["kernel"] == (3, 3, 1, 8)
  assert shapes["Conv_0"]["kernel"] == (1, 1, 8, 96)          # c_mid = 4 * C_out
  assert shapes["DepthwiseConv_1"]["conv"]["kernel"] == (3, 3, 1, 96)
  assert shapes["Conv_1"]["kernel"] == (1, 1, 96, 24)
  fixed = ops.SharpSepConv(24, C_mid=32, C_mid_mult=4)       # a fixed c_mid wins
  assert fixed.c_mid == 32


def _bn(x, eps=1e-5):
  m = x.mean((0, 1, 2))
  v = x.var((0, 1, 2))
  return (x - m) / np.sqrt(v + eps)


def _conv(x, w, stride=1, pad=0, dil=1, groups=1):
  return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                  rhs_dilation=(dil, dil), feature_group_count=groups,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("name,stride", [("dil_flood_conv_3x3", 2), ("choke_conv_3x3", 1)])
def test_forward_matches_fig3_written_out(name, stride):
  """Fig. 3's layer order: stride and dilation on the first depthwise conv only."""
  k, d, mult, c_mid = primitives.SHARP_SEP_CONVS[name]
  c_mid = c_mid or mult * 4
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 4))
  op = darts_primitives.make_op(name, 4, stride, False,
                                ops.OpOptions(depthwise="xla"), registry=primitives.OPS)
  p = op.init(jax.random.PRNGKey(0), x)
  got = op.apply(p, x)
  q = p["params"]
  h = jax.nn.relu(x)
  h = _conv(h, q["DepthwiseConv_0"]["conv"]["kernel"], stride, d * (k - 1) // 2, d, 4)
  h = _bn(_conv(h, q["Conv_0"]["kernel"]))
  h = jax.nn.relu(h)
  h = _conv(h, q["DepthwiseConv_1"]["conv"]["kernel"], 1, (k - 1) // 2, 1, c_mid)
  want = _bn(_conv(h, q["Conv_1"]["kernel"]))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)


def test_avg_pool_counts_the_padding_as_the_reference():
  x = jnp.ones((1, 4, 4, 1))
  y = darts_primitives.make_op("avg_pool_3x3", 1, 1, False, registry=primitives.OPS).apply(
      {}, x)
  assert float(y[0, 0, 0, 0]) == pytest.approx(4 / 9)     # corner: 4 ones of 9 cells
  assert float(y[0, 1, 1, 0]) == pytest.approx(1.0)
