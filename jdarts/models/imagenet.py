"""The ImageNet (mobile setting) evaluation network from a genotype (paper A.2.3).

`NetworkImageNet` is the reference's network (quark0/darts `cnn/model.py`) in
Flax linen, NHWC, for 224x224 images:

* stem0: 3x3 conv stride 2 to C/2 -> BN -> ReLU -> 3x3 conv stride 2 to C -> BN
  (224 -> 56);
* stem1: ReLU -> 3x3 conv stride 2 to C -> BN (56 -> 28);
* `layers` cells, reductions at `layers // 3` and `2 * layers // 3`
  (28 -> 14 -> 7); cell 0 reduces its s0 input (stem0's 56x56 output) with
  FactorizedReduce, i.e. it starts with `reduction_prev=True`;
* the auxiliary head on cell `2 * layers // 3`'s 7x7 output (the reference's
  docstring says 14x14; the map it receives is 7x7): ReLU -> 5x5 average
  pool stride 2 (7 -> 2) -> 1x1 conv 128 -> BN -> ReLU -> 2x2 conv 768 -> ReLU
  -> linear. The reference deliberately has no BN after the 768-channel conv
  ("omitted in my earlier implementation due to a typo", kept for consistency
  with the paper's experiments); neither has this one;
* 7x7 average pooling (a global average at 224x224 input) and a linear
  classifier.

The paper's network is `NetworkImageNet(DARTS_V2, C=48, layers=14)`: 4,718,752
parameters without the auxiliary head (4.7M, paper Table 3). Calling
convention as `jdarts.models.cifar.NetworkCIFAR`.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn

from jdarts import genotypes as genotypes_lib
from jdarts import ops
from jdarts.models.cells import Cell, Scalar, classifier
from jdarts.models.cifar import (EVAL_OPTS, _check_aux_output, cell_genotype,
                                 freeze_genotype, pooled_features)


class AuxiliaryHeadImageNet(nn.Module):
  """Auxiliary classifier on a 7x7 feature map (the reference's AuxiliaryHeadImageNet)."""
  num_classes: int
  opts: ops.OpOptions = EVAL_OPTS

  @nn.compact
  def __call__(self, x, train: bool = True):
    o = self.opts
    x = nn.relu(x)
    x = nn.avg_pool(x, (5, 5), strides=(2, 2), padding="VALID")
    x = ops._conv(128, 1, opts=o)(x)
    x = nn.relu(ops.BatchNorm(True, o)(x, train))
    x = nn.relu(ops._conv(768, 2, opts=o)(x))  # no BN here, as the reference
    _check_aux_output(x, "7x7 (224x224 images)")
    x = x.reshape(x.shape[0], -1)
    return classifier(self.num_classes, x.shape[-1])(x)


class NetworkImageNet(nn.Module):
  """The DARTS ImageNet network: (N, 224, 224, 3) -> ((N, K) logits, aux logits).

  Attributes:
    genotype: the cells.
    C: initial channels (paper A.2.3 / reference: 48).
    num_classes: K (1000).
    layers: number of cells (paper A.2.3: 14).
    auxiliary: build the auxiliary head.
    drop_path_prob: default drop-path probability (reference default 0).
    opts: operation options; BatchNorm keeps running averages by default.
  """
  genotype: genotypes_lib.Genotype
  C: int = 48
  num_classes: int = 1000
  layers: int = 14
  auxiliary: bool = True
  drop_path_prob: float = 0.0
  opts: ops.OpOptions = EVAL_OPTS

  def __post_init__(self):
    object.__setattr__(self, "genotype", freeze_genotype(self.genotype))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = True, drop_path_prob: Optional[Scalar] = None):
    """As `NetworkCIFAR.__call__`."""
    o = self.opts
    p = self.drop_path_prob if drop_path_prob is None else drop_path_prob
    C = self.C
    x = x.astype(o.dtype)
    s0 = ops._conv(C // 2, 3, 2, 1, opts=o, name="stem0_conv0")(x)
    s0 = nn.relu(ops.BatchNorm(True, o, name="stem0_bn0")(s0, train))
    s0 = ops._conv(C, 3, 2, 1, opts=o, name="stem0_conv1")(s0)
    s0 = ops.BatchNorm(True, o, name="stem0_bn1")(s0, train)
    s1 = ops._conv(C, 3, 2, 1, opts=o, name="stem1_conv")(nn.relu(s0))
    s1 = ops.BatchNorm(True, o, name="stem1_bn")(s1, train)
    logits_aux = None
    C_curr, reduction_prev = C, True
    for i in range(self.layers):
      reduction = i in (self.layers // 3, 2 * self.layers // 3)
      if reduction:
        C_curr *= 2
      entries, concat = cell_genotype(self.genotype, reduction)
      cell = Cell(entries, concat, C_curr, reduction, reduction_prev, o, name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, p, train)
      reduction_prev = reduction
      if (i == 2 * self.layers // 3 and self.auxiliary and
          (train or self.is_initializing())):
        aux = AuxiliaryHeadImageNet(self.num_classes, o, name="auxiliary_head")(s1, train)
        logits_aux = aux if train else None
    out = pooled_features(s1)
    logits = classifier(self.num_classes, out.shape[-1], name="classifier")(out)
    return logits, logits_aux
