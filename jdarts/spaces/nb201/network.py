"""NAS-Bench-201 networks in Flax linen, NHWC: the search supernet and the discrete network.

Both share the reference's macro structure (AutoDL-Projects
`cell_infers/tiny_network.py`, `cell_searchs/search_model_darts.py`):

    stem: 3x3 conv (3 -> C, no bias) -> BN
    N cells at C, ResNet basic block (stride 2) to 2C, N cells at 2C,
    basic block to 4C, N cells at 4C
    BN -> ReLU -> global average pool -> linear classifier

with C=16, N=5 in the benchmark. NB201's operations (its own namespace,
`genotype.PRIMITIVES`; every cell edge keeps channels and resolution):
'none' (zeros), 'skip_connect' (identity), 'nor_conv_1x1' and 'nor_conv_3x3'
(ReLU -> conv -> BN), 'avg_pool_3x3' (3x3 average pooling, padding excluded,
and no BN after it: NB201's POOLING adds only a 1x1 ReLUConvBN when channels
change, which never happens inside a cell).

The basic block (reference `ResNetBasicblock`): ReLUConvBN 3x3 stride 2 ->
ReLUConvBN 3x3, plus a shortcut of 2x2 average pooling stride 2 -> 1x1 conv
(no bias, no BN).

Search (`SearchNetwork`): every edge is a mixed operation weighted by
`mixing(alphas)` over the last axis, the same (6, 5) alphas in every cell.
BatchNorm uses batch statistics only (`ops.OpOptions(track_running_stats=False)`);
cell operations' BN has no affine parameters (the reference's search
`affine=False`), the stem, basic blocks and last BN keep theirs as in the
reference. The reference's search convolutions carry a bias when BN is
non-affine (`bias=not affine`); it is omitted here: a constant added before a
batch-statistics BN cancels exactly, so its gradient is zero and it would
only add inert parameters.

Evaluation (`TinyNetwork`): the cells of one `Arch`, affine BN with running
averages; parameter counts equal the reference's (tests/test_nb201.py).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jdarts import mixing as mixing_lib
from jdarts import ops
from jdarts.spaces.darts_cnn.cells import classifier
from jdarts.spaces.nb201.genotype import EDGES, NUM_NODES, PRIMITIVES, Arch


def make_op(name: str, C: int, affine: bool, opts: ops.OpOptions) -> nn.Module:
  """One NB201 cell operation (stride 1, C -> C channels) by its NB201 name."""
  if name == "none":
    return ops.Zero()
  if name == "skip_connect":
    return ops.Identity()
  if name == "nor_conv_1x1":
    return ops.ReLUConvBN(C, 1, 1, 0, affine, opts)
  if name == "nor_conv_3x3":
    return ops.ReLUConvBN(C, 3, 1, 1, affine, opts)
  if name == "avg_pool_3x3":
    return ops.Pool("avg")
  raise ValueError(f"unknown NB201 operation {name!r}; known: {', '.join(PRIMITIVES)}.")


class ResNetBasicBlock(nn.Module):
  """The reduction block between stages: (N, H, W, C_in) -> (N, H/2, W/2, C_out)."""
  C_out: int
  opts: ops.OpOptions = ops.OpOptions()

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = ops.ReLUConvBN(self.C_out, 3, 2, 1, True, self.opts, name="conv_a")(x, train)
    y = ops.ReLUConvBN(self.C_out, 3, 1, 1, True, self.opts, name="conv_b")(y, train)
    r = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    r = ops._conv(self.C_out, 1, opts=self.opts, name="downsample")(r)
    return r + y


class SearchCell(nn.Module):
  """A cell of mixed edges: (N, H, W, C), (6, num_ops) weights -> (N, H, W, C)."""
  C: int
  primitives: tuple = PRIMITIVES
  opts: ops.OpOptions = ops.OpOptions()

  @nn.compact
  def __call__(self, x, weights, train: bool = True):
    nodes = [x]
    for i in range(1, NUM_NODES):
      total = 0.0
      for e, (target, j) in enumerate(EDGES):
        if target != i:
          continue
        for k, name in enumerate(self.primitives):
          if name == "none":
            continue  # w * 0 adds nothing; 'none' still enters the mixing's weights
          op = make_op(name, self.C, False, self.opts)
          total = total + weights[e, k].astype(nodes[j].dtype) * op(nodes[j], train)
      nodes.append(total if not isinstance(total, float) else jnp.zeros_like(x))
    return nodes[-1]


class InferCell(nn.Module):
  """A discrete cell of `arch`: (N, H, W, C) -> (N, H, W, C)."""
  arch: Arch
  C: int
  opts: ops.OpOptions = ops.OpOptions(track_running_stats=True)

  @nn.compact
  def __call__(self, x, train: bool = True):
    nodes = [x]
    for i, node in enumerate(self.arch, start=1):
      total = 0.0
      for name, j in node:
        if name == "none":
          continue
        total = total + make_op(name, self.C, True, self.opts)(nodes[j], train)
      nodes.append(total if not isinstance(total, float) else jnp.zeros_like(x))
    return nodes[-1]


def _macro(cell_fn, x, C: int, N: int, num_classes: int, opts: ops.OpOptions, train: bool):
  """Stem, three stages of `cell_fn(x, C_stage, index)` with basic blocks between, head."""
  x = ops._conv(C, 3, 1, 1, opts=opts, name="stem_conv")(x)
  x = ops.BatchNorm(True, opts, name="stem_bn")(x, train)
  index = 0
  for stage, mult in enumerate((1, 2, 4)):
    if stage:
      x = ResNetBasicBlock(C * mult, opts, name=f"reduce_{stage}")(x, train)
    for _ in range(N):
      x = cell_fn(x, C * mult, index)
      index += 1
  x = nn.relu(ops.BatchNorm(True, opts, name="lastact_bn")(x, train))
  x = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
  return classifier(num_classes, x.shape[-1], name="classifier")(x)


class SearchNetwork(nn.Module):
  """The NB201 supernet: (N, H, W, 3) images, (6, num_ops) alphas -> (N, K) logits."""
  C: int = 16
  N: int = 5
  num_classes: int = 10
  primitives: tuple = PRIMITIVES
  mixing: str = "softmax"
  opts: ops.OpOptions = ops.OpOptions()

  @nn.compact
  def __call__(self, x, alphas, train: bool = True):
    x = x.astype(self.opts.dtype)
    weights = mixing_lib.mix(self.mixing, alphas)
    cell = lambda h, C, i: SearchCell(C, self.primitives, self.opts, name=f"cell_{i}")(
        h, weights, train)
    return _macro(cell, x, self.C, self.N, self.num_classes, self.opts, train)


class TinyNetwork(nn.Module):
  """The NB201 evaluation network of one `arch`: images -> ((N, K) logits, None).

  Called as the DARTS evaluation networks are (`jdarts.model_registry`):
  `net.apply(variables, images, train=..., mutable=['batch_stats'])`;
  `drop_path_prob` is accepted and ignored (NB201 trains without it).
  """
  arch: Arch
  C: int = 16
  N: int = 5
  num_classes: int = 10
  opts: ops.OpOptions = ops.OpOptions(track_running_stats=True)

  @nn.compact
  def __call__(self, x, train: bool = True, drop_path_prob: Optional[float] = None):
    del drop_path_prob
    x = x.astype(self.opts.dtype)
    cell = lambda h, C, i: InferCell(self.arch, C, self.opts, name=f"cell_{i}")(h, train)
    return _macro(cell, x, self.C, self.N, self.num_classes, self.opts, train), None


__all__ = ["make_op", "ResNetBasicBlock", "SearchCell", "InferCell", "SearchNetwork",
           "TinyNetwork"]
