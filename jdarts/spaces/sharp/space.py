"""The 'sharp' and 'sharp_sep_conv_darts' search spaces: DARTS cells over the sharpDARTS ops.

Both are `DartsCNNSpace` (the same supernet, alphas {'normal', 'reduce'}:
(14, num_ops), derivation, genotype format and `model` block) with the op
namespace `jdarts.spaces.sharp.primitives.OPS`:

* 'sharp': Table 1's ten candidates (sharp_darts.txt sec. 3.1);
* 'sharp_sep_conv_darts': DARTS's eight candidates with SharpSepConv blocks
  (SharpSepConvDARTS, sec. 4.2 item 2).

`model.mixing='max_w'` gives Max-W weighting (eq. 3). `model.batch_edges`
is not available (the per-source batching knows only DARTS's operations).
"""
from __future__ import annotations

from jdarts.spaces.base import SPACES
from jdarts.spaces.darts_cnn.space import DartsCNNSpace
from jdarts.spaces.sharp import primitives


@SPACES.register("sharp")
class SharpSpace(DartsCNNSpace):
  """sharpDARTS: DARTS cells over Table 1's operations."""
  name = "sharp"
  eval_model = {"name": "sharp_cifar"}
  op_registry = primitives.OPS
  default_primitives = primitives.PRIMITIVES


@SPACES.register("sharp_sep_conv_darts")
class SharpSepConvDartsSpace(DartsCNNSpace):
  """SharpSepConvDARTS: DARTS's candidates, every convolution a SharpSepConv block."""
  name = "sharp_sep_conv_darts"
  eval_model = {"name": "sharp_cifar"}
  op_registry = primitives.OPS
  default_primitives = primitives.DARTS_PRIMITIVES


__all__ = ["SharpSpace", "SharpSepConvDartsSpace"]
