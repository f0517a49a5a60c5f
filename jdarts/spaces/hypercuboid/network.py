"""MultiChannelNet (sharp_darts.txt sec. 4.1, Fig. 6): the search supernet and discrete paths.

A HyperCuboid over (filter scale pairs, normal depth, reduction depth,
primitives): `layers` pairs of stages, a stride-1 ("normal") stage then a
stride-2 ("reduction") one. Every stage maps the feature maps at each of the
K filter scales (`scales`, e.g. 32, 64, 128, 256) to each of the K scales
through each primitive; output scale j of a stage is the weighted sum over
input scales i and primitives p of W[s, i, j, p] * op_p(x_i). Layout as the
reference (ahundt/sharpDARTS `cnn/model_search.py` MultiChannelNetwork): one
3x3 conv + BN stem per scale; after the last stage a SharpSepConv per scale
to `final_filters` channels, summed, global average pooling, linear.

Alphas are {'normal': (L, K, K, P), 'reduce': (L, K, K, P)}; the mixing
(softmax by default) runs over each layer's K*K*P weights together, as the
reference's `arch_weights` (softmax over the flattened layer), so Max-W
(eq. 3) subtracts the maximum over the whole layer, as its forward does.

Primitives (the reference's MULTICHANNELNET_OPS): 'SharpSepConv' (3x3, C_in
-> C_out, stride) and 'ResizablePool' (3x3 max pool with the stride, then a
1x1 conv + BN when the channel count changes). The reference skips ops whose
weight is below 1/(K*K*P)^2 during search; this supernet always applies all.
"""
from __future__ import annotations

from typing import Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdarts import mixing as mixing_lib
from jdarts import ops
from jdarts.registry import Registry
from jdarts.spaces.darts_cnn.cells import classifier

PRIMITIVES = ("SharpSepConv", "ResizablePool")

# name -> factory(C_out, stride, affine, opts, name=None) -> module (N, H, W, C_in) -> (N, H/s, W/s, C_out)
OPS = Registry("MultiChannelNet operation")


class ResizablePool(nn.Module):
  """3x3 max pool (padding 1, stride), then 1x1 conv + BN if the channels change."""
  C_out: int
  stride: int = 1
  affine: bool = True
  opts: ops.OpOptions = ops.OpOptions()

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = ops.Pool("max", self.stride)(x, train)
    if x.shape[-1] != self.C_out:
      y = ops._conv(self.C_out, 1, opts=self.opts)(y)
      y = ops.BatchNorm(self.affine, self.opts)(y, train)
    return y


OPS.register("SharpSepConv", lambda C_out, stride, affine, opts, name=None: ops.SharpSepConv(
    C_out, 3, stride, None, 1, affine, opts=opts, name=name))
OPS.register("ResizablePool", lambda C_out, stride, affine, opts, name=None: ResizablePool(
    C_out, stride, affine, opts, name=name))


def stage_weights(alphas: Dict[str, jnp.ndarray], mixing: str) -> jnp.ndarray:
  """{'normal', 'reduce'}: (L, K, K, P) -> (2L, K, K, P) mixed weights, stages in order.

  The mixing runs over each layer's K*K*P entries; stage 2l is layer l's
  normal stage, 2l + 1 its reduction stage.
  """
  n, r = alphas["normal"], alphas["reduce"]
  L = n.shape[0]
  mix = lambda a: mixing_lib.mix(mixing, a.reshape(L, -1)).reshape(a.shape)
  return jnp.stack([mix(n), mix(r)], axis=1).reshape((2 * L,) + n.shape[1:])


def _stem(C: int, opts, x, train, name):
  x = ops._conv(C, 3, 1, 1, opts=opts, name=f"{name}_conv")(x)
  return ops.BatchNorm(True, opts, name=f"{name}_bn")(x, train)


def _head(final_filters: int, num_classes: int, opts, states, train):
  out = sum(ops.SharpSepConv(final_filters, 3, opts=opts, name=f"final_{k}")(s, train)
            for k, s in states)
  out = jnp.mean(out.astype(jnp.promote_types(out.dtype, jnp.float32)), axis=(1, 2))
  return classifier(num_classes, out.shape[-1], name="classifier")(out)


class MultiChannelNet(nn.Module):
  """The search supernet: (N, H, W, C) images, alphas -> (N, num_classes) logits."""
  scales: Sequence[int] = (32, 64, 128, 256)
  layers: int = 4
  primitives: Sequence[str] = PRIMITIVES
  num_classes: int = 10
  final_filters: int = 768
  mixing: str = "softmax"
  opts: ops.OpOptions = ops.OpOptions()

  @nn.compact
  def __call__(self, x, alphas, train: bool = True):
    o = self.opts
    x = x.astype(o.dtype)
    w = stage_weights(alphas, self.mixing)
    states = [_stem(C, o, x, train, f"stem_{k}") for k, C in enumerate(self.scales)]
    for s in range(2 * self.layers):
      stride = 1 + s % 2
      new = []
      for j, C_out in enumerate(self.scales):
        acc = 0.0
        for i, h in enumerate(states):
          for p, name in enumerate(self.primitives):
            op = OPS.get(name)(C_out, stride, False, o, name=f"stage_{s}_in_{i}_out_{j}_{name}")
            acc = acc + w[s, i, j, p].astype(h.dtype) * op(h, train)
        new.append(acc)
      states = new
    return _head(self.final_filters, self.num_classes, o, list(enumerate(states)), train)


class MultiChannelPathNet(nn.Module):
  """The discrete network of one path: (N, H, W, C) -> ((N, num_classes) logits, None).

  Attributes:
    channels: S + 1 channel counts (the stem's, then each stage's output).
    primitives: S primitive names; stage s has stride 1 + s % 2.
    num_classes, final_filters: as `MultiChannelNet`.
    opts: evaluation options (BatchNorm running averages by default).
  """
  channels: Sequence[int]
  primitives: Sequence[str]
  num_classes: int = 10
  final_filters: int = 768
  opts: ops.OpOptions = ops.OpOptions(track_running_stats=True)

  @nn.compact
  def __call__(self, x, train: bool = True):
    o = self.opts
    h = _stem(self.channels[0], o, x.astype(o.dtype), train, "stem")
    for s, name in enumerate(self.primitives):
      h = OPS.get(name)(self.channels[s + 1], 1 + s % 2, True, o, name=f"stage_{s}_{name}")(
          h, train)
    return _head(self.final_filters, self.num_classes, o, [(0, h)], train), None


def handmade_path(scales: Sequence[int], layers: int):
  """Sec. 4.1's handmade baseline: (channels, primitives).

  "SharpSepConv and 32 filters, doubling the number of output filters at
  layers of stride 2 up to the limit of 256": SharpSepConv in the normal
  stages, and (as the reference's MULTI_CHANNEL_HANDMADE_PATH) ResizablePool
  at the stride-2 stages, doubling up to the largest scale.
  """
  channels, prims, k = [scales[0]], [], 0
  for _ in range(layers):
    channels.append(scales[k])
    prims.append("SharpSepConv")
    k = min(k + 1, len(scales) - 1)
    channels.append(scales[k])
    prims.append("ResizablePool")
  return channels, prims


__all__ = ["PRIMITIVES", "OPS", "ResizablePool", "stage_weights", "MultiChannelNet",
           "MultiChannelPathNet", "handmade_path"]
