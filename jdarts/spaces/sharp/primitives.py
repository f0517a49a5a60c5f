"""The sharpDARTS op namespace: Table 1's operations and DARTS's names, all SharpSepConv.

sharp_darts.txt Table 1 lists the sharpDARTS candidates; every "Conv" is a
configuration of `jdarts.ops.SharpSepConv` (Fig. 1 and 3):

  name                 k  dilation  c_mid
  sep_conv_3x3         3  1         1 * C_out
  dil_conv_3x3         3  2         1 * C_out
  flood_conv_3x3       3  1         4 * C_out
  dil_flood_conv_3x3   3  2         4 * C_out
  choke_conv_3x3       3  1         32
  dil_choke_conv_3x3   3  2         32

plus none, avg_pool_3x3, max_pool_3x3 and skip_connect. The stride is the
cell's (2 on a reduction cell's inputs), as for every DARTS operation:
Table 1's S=2 for DilChokeConv3x3 is not what the reference does
(ahundt/sharpDARTS `cnn/operations.py` passes the cell's stride to every
op). SharpSepConvDARTS (sec. 4.2 item 2) searches DARTS's primitives with
SharpSepConv blocks, so `sep_conv_5x5` and `dil_conv_5x5` are here too.

Differences from the DARTS space's namesakes (`darts_cnn.primitives.OPS`),
which is why this is a separate namespace: the convolutions are SharpSepConv
blocks, and `avg_pool_3x3` counts the zero padding in its average, as the
reference's `ResizablePool(pool_type=nn.AvgPool2d)` (PyTorch's default
count_include_pad=True; DARTS excludes it).

`PRIMITIVES` is Table 1 in its order (the reference's `PRIMITIVES` list
omits avg_pool_3x3; the paper's table has it); `DARTS_PRIMITIVES` the DARTS
candidates of sec. 2.1. Users register more with `OPS.register` as in
`darts_cnn.primitives`.
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn

from jdarts import genotypes
from jdarts import ops
from jdarts.spaces.darts_cnn import primitives as darts_primitives
from jdarts.spaces.darts_cnn.primitives import OpRegistry

OPS = OpRegistry("sharpDARTS operation")

# sharp_darts.txt Table 1, in its order.
PRIMITIVES: Tuple[str, ...] = (
    "none", "avg_pool_3x3", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3",
    "flood_conv_3x3", "dil_flood_conv_3x3", "choke_conv_3x3", "dil_choke_conv_3x3")
# DARTS sec. 2.1 (the reference's DARTS_PRIMITIVES), built from SharpSepConv here.
DARTS_PRIMITIVES: Tuple[str, ...] = genotypes.PRIMITIVES

# (kernel, dilation, C_mid_mult, C_mid) of each SharpSepConv operation.
SHARP_SEP_CONVS = {
    "sep_conv_3x3": (3, 1, 1, None),
    "sep_conv_5x5": (5, 1, 1, None),
    "dil_conv_3x3": (3, 2, 1, None),
    "dil_conv_5x5": (5, 2, 1, None),
    "flood_conv_3x3": (3, 1, 4, None),       # Table 1: CMidMult 4
    "dil_flood_conv_3x3": (3, 2, 4, None),
    "choke_conv_3x3": (3, 1, 1, 32),         # Table 1: CMid 32
    "dil_choke_conv_3x3": (3, 2, 1, 32),
}


class AvgPoolWithPadding(nn.Module):
  """3x3 average pooling, padding 1, the zero padding counted (PyTorch's default)."""
  stride: int = 1

  def __call__(self, x, train: bool = True):
    s = self.stride
    return nn.avg_pool(x, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)),
                       count_include_pad=True)


@OPS.register("none", parameter_free=True)
def _none(C, stride, affine, opts):
  return ops.Zero(stride)


@OPS.register("avg_pool_3x3", parameter_free=True, search_bn=True)
def _avg_pool(C, stride, affine, opts):
  return AvgPoolWithPadding(stride)


# Max pooling and skip are DARTS's own: the same factories and metadata.
for _name in ("max_pool_3x3", "skip_connect"):
  _info = darts_primitives.OPS.info(_name)
  OPS.register(_name, darts_primitives.OPS.get(_name),
               parameter_free=_info.parameter_free, search_bn=_info.search_bn)


def _sharp_factory(k, d, mult, c_mid):
  def factory(C, stride, affine, opts):
    return ops.SharpSepConv(C, k, stride, None, d, affine, mult, c_mid, opts)
  return factory


for _name, _args in SHARP_SEP_CONVS.items():
  OPS.register(_name, _sharp_factory(*_args))

# Published cells (ahundt/sharpDARTS cnn/genotypes.py): the sharpDARTS cell
# (Table 2 "sharpDARTS", SHARP_DARTS = CHOKE_FLOOD_DIL_IS_SEP_CONV) and the
# SharpSepConvDARTS cell (SHARPSEPCONV_DARTS = DARTS_PRIMITIVES_DIL_IS_SEPCONV).
_C = (2, 3, 4, 5)
SHARP_DARTS = genotypes.Genotype(
    normal=[("choke_conv_3x3", 0), ("choke_conv_3x3", 1), ("skip_connect", 0),
            ("choke_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 1),
            ("skip_connect", 0), ("skip_connect", 1)], normal_concat=_C,
    reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0),
            ("skip_connect", 2), ("max_pool_3x3", 0), ("skip_connect", 2),
            ("skip_connect", 2), ("flood_conv_3x3", 0)], reduce_concat=_C)
SHARPSEPCONV_DARTS = genotypes.Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 2), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1)], normal_concat=_C,
    reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("skip_connect", 2),
            ("avg_pool_3x3", 0), ("skip_connect", 2), ("avg_pool_3x3", 0),
            ("skip_connect", 2), ("skip_connect", 3)], reduce_concat=_C)
for _name, _g in (("SHARP_DARTS", SHARP_DARTS), ("SHARPSEPCONV_DARTS", SHARPSEPCONV_DARTS)):
  if _name not in genotypes.GENOTYPES:
    genotypes.register_genotype(_name, _g, known_ops=tuple(OPS.names()))

__all__ = ["OPS", "PRIMITIVES", "DARTS_PRIMITIVES", "SHARP_SEP_CONVS", "AvgPoolWithPadding",
           "SHARP_DARTS", "SHARPSEPCONV_DARTS"]
