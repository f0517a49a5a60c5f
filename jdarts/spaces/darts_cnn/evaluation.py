"""The discrete DARTS evaluation networks built from a genotype (paper sec. 3.2, A.2).

Both are the reference's networks (quark0/darts `cnn/model.py`) in Flax
linen, NHWC, made of `cells.Cell`s, and are registered in
`jdarts.models.MODELS` as 'cifar' and 'imagenet' (what `jdarts train` builds).

`NetworkCIFAR` (A.2.1): a 3x3 stem conv to `stem_multiplier * C` channels +
BN, then `layers` cells with reductions (channels doubled, resolution halved)
at `layers // 3` and `2 * layers // 3`, global average pooling and a linear
classifier. With `auxiliary=True` an auxiliary classifier reads the output of
cell `2 * layers // 3` (8x8 for 32x32 images) during training. The paper's
network is `NetworkCIFAR(genotypes.DARTS_V2, C=36, layers=20, auxiliary=True)`:
3,349,342 parameters without the auxiliary head (tests/test_models.py).

`NetworkImageNet` (A.2.3, mobile setting, 224x224 images):

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

Its paper network is `NetworkImageNet(DARTS_V2, C=48, layers=14)`: 4,718,752
parameters without the auxiliary head (4.7M, paper Table 3).

BatchNorm keeps running averages (`opts.track_running_stats=True`, affine;
PyTorch's momentum 0.1 is Flax's 0.9): pass `mutable=['batch_stats']` when
training and use the averages with `train=False` (one difference: the running
variance averages the batch's biased variance, PyTorch's the unbiased one, a
factor n / (n - 1) with n >= 384 values per channel at batch 96).

Calling convention::

    variables = net.init({'params': k1, 'dropout': k2}, images, train=False)
    (logits, logits_aux), updates = net.apply(
        variables, images, train=True, drop_path_prob=p,
        rngs={'dropout': key}, mutable=['batch_stats'])
    logits, _ = net.apply(variables, images, train=False)

`logits_aux` is None unless training with the auxiliary head.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jdarts import genotypes as genotypes_lib
from jdarts import ops
from jdarts import model_registry as models_base
from jdarts.spaces.base import config_get
from jdarts.spaces.darts_cnn.cells import Cell, Scalar, classifier

EVAL_OPTS = ops.OpOptions(track_running_stats=True)


def freeze_genotype(genotype) -> genotypes_lib.Genotype:
  """A validated genotype made of tuples (hashable, safe as a module attribute)."""
  g = genotypes_lib.validate_genotype(genotype, known_ops=None)
  return genotypes_lib.Genotype(tuple(tuple(e) for e in g.normal), tuple(g.normal_concat),
                                tuple(tuple(e) for e in g.reduce), tuple(g.reduce_concat))


def cell_genotype(genotype, reduction: bool):
  """(entries, concat) of the reduction or the normal cell."""
  if reduction:
    return genotype.reduce, genotype.reduce_concat
  return genotype.normal, genotype.normal_concat


def pooled_features(x):
  """Global average pool (N, H, W, C) -> (N, C), in at least float32."""
  return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))


class AuxiliaryHeadCIFAR(nn.Module):
  """Auxiliary classifier on an 8x8 feature map (the reference's AuxiliaryHeadCIFAR).

  ReLU -> 5x5 average pool, stride 3, no padding (8x8 -> 2x2) -> 1x1 conv to
  128 -> BN -> ReLU -> 2x2 conv to 768 -> BN -> ReLU -> linear.
  """
  num_classes: int
  opts: ops.OpOptions = EVAL_OPTS

  @nn.compact
  def __call__(self, x, train: bool = True):
    o = self.opts
    x = nn.relu(x)
    x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")
    x = ops._conv(128, 1, opts=o)(x)
    x = nn.relu(ops.BatchNorm(True, o)(x, train))
    x = ops._conv(768, 2, opts=o)(x)
    x = nn.relu(ops.BatchNorm(True, o)(x, train))
    _check_aux_output(x, "8x8 (32x32 images)")
    x = x.reshape(x.shape[0], -1)
    return classifier(self.num_classes, x.shape[-1])(x)


def _check_aux_output(x, expected: str) -> None:
  if x.shape[1:3] != (1, 1):
    raise ValueError(f"the auxiliary head expects a {expected} input and ends at 1x1, "
                     f"but here ends at {x.shape[1]}x{x.shape[2]}; use the paper's "
                     "image size or set model.auxiliary=False.")


class NetworkCIFAR(nn.Module):
  """The DARTS CIFAR evaluation network: (N, H, W, 3) -> ((N, K) logits, aux logits).

  Attributes:
    genotype: the cells (a `Genotype`; stored as tuples).
    C: initial channels (paper A.2.1: 36).
    num_classes: K.
    layers: number of cells (paper A.2.1: 20).
    auxiliary: build the auxiliary head (paper A.2.1: weight 0.4 in the loss).
    drop_path_prob: default drop-path probability when the call gives none
      (paper A.2.1: 0.2, ramped linearly over training by the train loop).
    stem_multiplier: stem channels = stem_multiplier * C (reference: 3).
    opts: operation options; BatchNorm keeps running averages by default.
    op_registry: the op namespace of the genotype's names; None: the DARTS
      space's `primitives.OPS`.
  """
  genotype: genotypes_lib.Genotype
  C: int = 36
  num_classes: int = 10
  layers: int = 20
  auxiliary: bool = True
  drop_path_prob: float = 0.0
  stem_multiplier: int = 3
  opts: ops.OpOptions = EVAL_OPTS
  op_registry: Any = None  # the cells' op namespace; None: the DARTS space's OPS

  def __post_init__(self):
    object.__setattr__(self, "genotype", freeze_genotype(self.genotype))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = True, drop_path_prob: Optional[Scalar] = None):
    """Args: x (N, H, W, C_in) images; train: batch statistics, drop-path and
    the auxiliary head; drop_path_prob: overrides the attribute (may be traced).

    Returns: (logits (N, K), logits_aux (N, K) or None).
    """
    o = self.opts
    p = self.drop_path_prob if drop_path_prob is None else drop_path_prob
    x = x.astype(o.dtype)
    s = ops._conv(self.stem_multiplier * self.C, 3, 1, 1, opts=o, name="stem_conv")(x)
    s = ops.BatchNorm(True, o, name="stem_bn")(s, train)
    s0 = s1 = s
    logits_aux = None
    C_curr, reduction_prev = self.C, False
    for i in range(self.layers):
      reduction = i in (self.layers // 3, 2 * self.layers // 3)
      if reduction:
        C_curr *= 2
      entries, concat = cell_genotype(self.genotype, reduction)
      cell = Cell(entries, concat, C_curr, reduction, reduction_prev, o, self.op_registry,
                  name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, p, train)
      reduction_prev = reduction
      # Initialisation always builds the head, so `init(train=False)` has its weights.
      if (i == 2 * self.layers // 3 and self.auxiliary and
          (train or self.is_initializing())):
        aux = AuxiliaryHeadCIFAR(self.num_classes, o, name="auxiliary_head")(s1, train)
        logits_aux = aux if train else None
    out = pooled_features(s1)
    logits = classifier(self.num_classes, out.shape[-1], name="classifier")(out)
    return logits, logits_aux


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
    op_registry: the op namespace of the genotype's names; None: the DARTS
      space's `primitives.OPS`.
  """
  genotype: genotypes_lib.Genotype
  C: int = 48
  num_classes: int = 1000
  layers: int = 14
  auxiliary: bool = True
  drop_path_prob: float = 0.0
  opts: ops.OpOptions = EVAL_OPTS
  op_registry: Any = None  # the cells' op namespace; None: the DARTS space's OPS

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
      cell = Cell(entries, concat, C_curr, reduction, reduction_prev, o, self.op_registry,
                  name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, p, train)
      reduction_prev = reduction
      if (i == 2 * self.layers // 3 and self.auxiliary and
          (train or self.is_initializing())):
        aux = AuxiliaryHeadImageNet(self.num_classes, o, name="auxiliary_head")(s1, train)
        logits_aux = aux if train else None
    out = pooled_features(s1)
    logits = classifier(self.num_classes, out.shape[-1], name="classifier")(out)
    return logits, logits_aux


# ---------------------------------------------------------------------------
# Registration in jdarts.models.MODELS (configs' `model.name`)
# ---------------------------------------------------------------------------

@models_base.MODELS.register("cifar")
def _cifar(cfg, num_classes: int, genotype, opts: ops.OpOptions) -> nn.Module:
  return NetworkCIFAR(genotype, C=config_get(cfg, "init_channels", 36),
                      num_classes=num_classes, layers=config_get(cfg, "layers", 20),
                      auxiliary=config_get(cfg, "auxiliary", True),
                      drop_path_prob=config_get(cfg, "drop_path_prob", 0.0),
                      stem_multiplier=config_get(cfg, "stem_multiplier", 3), opts=opts)


@models_base.MODELS.register("imagenet")
def _imagenet(cfg, num_classes: int, genotype, opts: ops.OpOptions) -> nn.Module:
  return NetworkImageNet(genotype, C=config_get(cfg, "init_channels", 48),
                         num_classes=num_classes, layers=config_get(cfg, "layers", 14),
                         auxiliary=config_get(cfg, "auxiliary", True),
                         drop_path_prob=config_get(cfg, "drop_path_prob", 0.0), opts=opts)


__all__ = ["NetworkCIFAR", "NetworkImageNet", "AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet",
           "EVAL_OPTS", "freeze_genotype", "cell_genotype", "pooled_features"]
