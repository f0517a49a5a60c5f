"""Building blocks of convolutional search spaces and networks, as Flax linen modules.

Layout is NHWC throughout (channels last, as XLA prefers), so the reference
implementation's channel concatenation on axis 1 is axis -1 here. Every
module is called as `module(x, train=True)` with `x` of shape (N, H, W, C) ->
(N, H // stride, W // stride, C_out).

No operation namespace lives here: each search space names its candidate
operations itself (the DARTS CNN space's registry is
`jdarts.spaces.darts_cnn.primitives.OPS`), since the same name can mean
different operations in different spaces.

Two details that matter for faithfulness and speed:

* Search-time BatchNorm (`opts.track_running_stats=False`, paper A.1.1) always
  normalises with the statistics of the current batch and holds no state, so
  a search network has only `params`. With `opts.bn_axis_name` set, the batch
  moments are averaged over that device axis, so statistics are those of the
  global batch exactly as on one device.
* Depthwise convolutions have four implementations with identical parameters:
  XLA's grouped convolution (`'xla'`), a sum of k*k shifted, scaled copies of
  the input (`'shift'`), a dense convolution with a block-diagonal kernel
  (`'dense'`) and the shift-and-add forward and input gradient with the
  dense form's kernel gradient (`'fused'`), all in `jdarts.depthwise`.
  XLA:CPU runs grouped convolutions slowly, so `'auto'` picks `'xla'` on
  GPU/TPU and, on CPU at widths up to 128, `'fused'` for inputs of at least
  `FUSED_MIN_POSITIONS` positions outside second-order programs, `'dense'`
  otherwise (`jdarts.depthwise.resolve_depthwise`; measurements in
  benchmarks/RESULTS.md).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jdarts.config_lib import ConfigError
from jdarts.depthwise import (DEPTHWISE_IMPLS, depthwise_conv_dense, depthwise_conv_fused,
                              depthwise_conv_shift, resolve_depthwise, shifted_taps)



@dataclasses.dataclass(frozen=True)
class OpOptions:
  """Options shared by every operation of a network.

  Attributes:
    depthwise: 'auto' | 'xla' | 'shift' | 'dense' | 'fused': depthwise
      convolution implementation (see `DepthwiseConv`).
    track_running_stats: False for search networks (batch statistics only, no
      state); True for evaluation networks (running averages in the
      'batch_stats' collection, used when `train=False`).
    bn_axis_name: if set, BatchNorm moments are averaged over this named
      device axis (cross-replica statistics).
    bn_momentum: running-average decay (PyTorch's momentum 0.1 is 0.9 here).
    bn_epsilon: added to the variance, as PyTorch's default 1e-5.
    dtype: computation dtype (parameters stay float32).
    init: 'pytorch' (modern PyTorch's default initialisation) | 'pytorch0.3'
      (the PyTorch quark0/darts ran on: depthwise kernels U(+-1/(k sqrt C)),
      affine BatchNorm scales U(0, 1)); see `conv_init`.
  """
  depthwise: str = "auto"
  track_running_stats: bool = False
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  init: str = "pytorch"

  def __post_init__(self):
    if self.depthwise not in DEPTHWISE_IMPLS:
      raise ValueError(f"Unknown depthwise implementation {self.depthwise!r}; "
                       f"choose one of {DEPTHWISE_IMPLS}.")
    check_init(self.init)


# Modern PyTorch's (>= 0.4) default Conv2d/Linear initialisation, kaiming_uniform
# with a=sqrt(5): U(+-1/sqrt(fan_in)), fan_in = C_in/groups * k*k. NOT quite the
# PyTorch 0.3 that quark0/darts ran on, whose bound 1/sqrt(C_in * k*k) ignores
# groups: same for dense convs and Linear layers, but a depthwise kernel there
# has bound 1/(k sqrt(C)) against our 1/k. PyTorch 0.3 also drew affine
# BatchNorm scales from U(0, 1) (ours: ones, as PyTorch >= 0.4); in the search
# supernet only the stem BN is affine. `OpOptions.init='pytorch0.3'`
# (`model.init`) gives the 0.3 initialisation (`conv_init`, `bn_scale_init`).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# `model.init`: which PyTorch's default initialisation the operations copy.
INITS = ("pytorch", "pytorch0.3")


def check_init(value: Any) -> str:
  """Returns `model.init` if it names an initialisation; ConfigError otherwise."""
  if value not in INITS:
    raise ConfigError(f"model.init={value!r}; choose 'pytorch' (modern PyTorch's defaults, "
                      "the default) or 'pytorch0.3' (the PyTorch 0.3 quark0/darts ran on).")
  return value


def conv_init(opts: "OpOptions", groups: int = 1):
  """Kernel initialiser of a conv with `groups` groups under `opts.init`.

  PyTorch 0.3's bound 1/sqrt(C_in k k) is the modern 1/sqrt(C_in/groups k k)
  divided by sqrt(groups): the variance scale divided by groups.
  """
  if opts.init == "pytorch0.3" and groups > 1:
    return nn.initializers.variance_scaling(1.0 / (3.0 * groups), "fan_in", "uniform")
  return torch_default_init


def bn_scale_init(opts: "OpOptions"):
  """Affine BatchNorm scale initialiser: ones, or U(0, 1) under PyTorch 0.3."""
  return nn.initializers.uniform(1.0) if opts.init == "pytorch0.3" else nn.initializers.ones


# A nested jit: the search supernet holds hundreds of BatchNorms of a few
# shapes, and JAX traces (and lowers) a jitted function once per shape instead
# of once per call, which cut the weight step's tracing by a third
# (benchmarks/RESULTS.md). XLA inlines the calls: the same program.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _batch_stats_normalize(x, axes: Tuple[int, ...], eps: float, axis_name):
  """(x - mean) / sqrt(var + eps) with the moments of this batch over `axes`, in >= float32."""
  # Moments in at least float32: variances of bf16 activations lose too many
  # bits. float64 stays float64, so exactness checks in x64 hold.
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  # Two passes (mean first, then the mean squared deviation), not
  # E[x^2] - E[x]^2: the single pass cancels where |mean| >> std and its
  # round-off then depends on how the devices' sums are ordered (issue 11).
  # Across devices: one more pmean per BatchNorm.
  mean = jnp.mean(xf, axis=axes, keepdims=True)
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  centred = xf - mean
  var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
  if axis_name is not None:
    var = lax.pmean(var, axis_name)
  return centred * lax.rsqrt(var + eps)


class BatchNorm(nn.Module):
  """BatchNorm over (N, H, W) with optional affine parameters.

  With `opts.track_running_stats=False` it always uses batch statistics and owns
  no state (search). Otherwise it is Flax's BatchNorm with running averages in
  'batch_stats', used when `train=False` (evaluation networks).

  `axes`: the axes the batch-statistics moments reduce over, (0, 1, 2) for
  (N, H, W, C); e.g. (1, 2, 3) normalises (G, N, H, W, C) as G separate
  BatchNorms in one (batch statistics only).
  """
  affine: bool
  opts: OpOptions = OpOptions()
  axes: Tuple[int, ...] = (0, 1, 2)

  @nn.compact
  def __call__(self, x, train: bool = True):
    o = self.opts
    if o.track_running_stats:
      if tuple(self.axes) != (0, 1, 2):
        raise ValueError(f"BatchNorm(axes={self.axes}) needs batch statistics "
                         "(opts.track_running_stats=False).")
      return nn.BatchNorm(use_running_average=not train, momentum=o.bn_momentum,
                          epsilon=o.bn_epsilon, use_scale=self.affine,
                          use_bias=self.affine, axis_name=o.bn_axis_name,
                          scale_init=bn_scale_init(o), dtype=o.dtype, name="bn")(x)
    y = _batch_stats_normalize(x, tuple(self.axes), o.bn_epsilon, o.bn_axis_name)
    if self.affine:
      C = x.shape[-1]
      y = y * self.param("scale", bn_scale_init(o), (C,))
      y = y + self.param("bias", nn.initializers.zeros, (C,))
    return y.astype(x.dtype)


def _conv(features, kernel, stride=1, padding=0, dilation=1, groups=1, *,
          opts: OpOptions, name=None, use_bias=False):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 kernel_dilation=(dilation, dilation), feature_group_count=groups,
                 use_bias=use_bias, kernel_init=conv_init(opts, groups),
                 dtype=opts.dtype, name=name)


class _KernelHolder(nn.Module):
  """Owns a conv kernel at the path an `nn.Conv` would (`<name>/kernel`)."""
  shape: Tuple[int, ...]
  init: Any = torch_default_init

  @nn.compact
  def __call__(self):
    return self.param("kernel", self.init, self.shape)


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, no bias; parameters identical for every impl."""
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  opts: OpOptions = OpOptions()

  @nn.compact
  def __call__(self, x):
    N, H, W, C = x.shape
    impl = resolve_depthwise(self.opts.depthwise, C, N * H * W)
    x = x.astype(self.opts.dtype)
    if impl == "xla":
      return _conv(C, self.kernel_size, self.stride, self.padding, self.dilation,
                   groups=C, opts=self.opts, name="conv")(x)
    # Same parameter path and layout as the 'xla' branch, so checkpoints and
    # tests can swap implementations freely.
    kernel = _KernelHolder((self.kernel_size, self.kernel_size, 1, C),
                           conv_init(self.opts, C), name="conv")()
    if impl == "dense":
      return depthwise_conv_dense(x, kernel, self.stride, self.padding, self.dilation)
    if impl == "fused":
      return depthwise_conv_fused(x, kernel, self.stride, self.padding, self.dilation)
    return depthwise_conv_shift(x, kernel, self.stride, self.padding, self.dilation)


class ReLUConvBN(nn.Module):
  """ReLU -> k x k conv -> BN (the reference's ReLUConvBN)."""
  C_out: int
  kernel_size: int
  stride: int
  padding: int
  affine: bool = True
  opts: OpOptions = OpOptions()

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(x)
    x = _conv(self.C_out, self.kernel_size, self.stride, self.padding,
              opts=self.opts)(x)
    return BatchNorm(self.affine, self.opts)(x, train)


class DilConv(nn.Module):
  """ReLU -> dilated depthwise conv -> 1x1 conv -> BN."""
  C_out: int
  kernel_size: int
  stride: int
  padding: int
  dilation: int
  affine: bool = True
  opts: OpOptions = OpOptions()

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(x)
    x = DepthwiseConv(self.kernel_size, self.stride, self.padding, self.dilation,
                      self.opts)(x)
    x = _conv(self.C_out, 1, opts=self.opts)(x)
    return BatchNorm(self.affine, self.opts)(x, train)


class SepConv(nn.Module):
  """Two stacked DilConv(dilation=1): the first strided, the second keeping size."""
  C_out: int
  kernel_size: int
  stride: int
  padding: int
  affine: bool = True
  opts: OpOptions = OpOptions()

  @nn.compact
  def __call__(self, x, train: bool = True):
    C_in = x.shape[-1]
    x = DilConv(C_in, self.kernel_size, self.stride, self.padding, 1,
                self.affine, self.opts)(x, train)
    return DilConv(self.C_out, self.kernel_size, 1, self.padding, 1,
                   self.affine, self.opts)(x, train)


class SharpSepConv(nn.Module):
  """sharpDARTS's SharpSepConv block (sharp_darts.txt Fig. 1 and 3).

  ReLU -> k x k depthwise conv (stride, dilation) -> 1x1 conv to c_mid -> BN
  -> ReLU -> k x k depthwise conv (stride 1, dilation 1) -> 1x1 conv to C_out
  -> BN, all convolutions without bias. The stride and the dilation act on
  the first depthwise conv only, as in the paper's Fig. 3 and the reference
  (ahundt/sharpDARTS `cnn/operations.py`); the second keeps the size with
  padding (k - 1) // 2. c_mid = C_mid when given (the "choke" ops' fixed 32),
  else int(C_out * C_mid_mult) (4 for "flood").

  Parameters: k*k*C_in + C_in*c_mid + k*k*c_mid + c_mid*C_out, plus
  2*(c_mid + C_out) BatchNorm scales and biases when `affine`.

  Attributes:
    C_out: output channels.
    kernel_size: k.
    stride: of the first depthwise conv.
    padding: of the first depthwise conv; None: dilation * (k - 1) // 2,
      which keeps the size at stride 1.
    dilation: of the first depthwise conv.
    affine: BatchNorm scale and bias (False in search networks).
    C_mid_mult: c_mid relative to C_out, used when C_mid is None.
    C_mid: a fixed c_mid, or None.
    opts: shared operation options.
  """
  C_out: int
  kernel_size: int = 3
  stride: int = 1
  padding: Optional[int] = None
  dilation: int = 1
  affine: bool = True
  C_mid_mult: float = 1
  C_mid: Optional[int] = None
  opts: OpOptions = OpOptions()

  @property
  def c_mid(self) -> int:
    return self.C_mid if self.C_mid else int(self.C_out * self.C_mid_mult)

  @nn.compact
  def __call__(self, x, train: bool = True):
    k, d = self.kernel_size, self.dilation
    pad = d * (k - 1) // 2 if self.padding is None else self.padding
    x = nn.relu(x)
    x = DepthwiseConv(k, self.stride, pad, d, self.opts)(x)
    x = _conv(self.c_mid, 1, opts=self.opts)(x)
    x = nn.relu(BatchNorm(self.affine, self.opts)(x, train))
    x = DepthwiseConv(k, 1, (k - 1) // 2, 1, self.opts)(x)
    x = _conv(self.C_out, 1, opts=self.opts)(x)
    return BatchNorm(self.affine, self.opts)(x, train)


class FactorizedReduce(nn.Module):
  """Halves the resolution with two offset 1x1 stride-2 convs, concatenated."""
  C_out: int
  affine: bool = True
  opts: OpOptions = OpOptions()

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.C_out % 2:
      raise ValueError(f"FactorizedReduce needs an even C_out, got {self.C_out}.")
    x = nn.relu(x)
    a = _conv(self.C_out // 2, 1, 2, opts=self.opts)(x)
    # The second path sees the input shifted by one pixel, so together the two
    # paths cover every input position. Padding the shifted input at the far
    # edge keeps odd sizes in step with the first path, as the reference does.
    shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    b = _conv(self.C_out // 2, 1, 2, opts=self.opts)(shifted)
    b = b[:, :a.shape[1], :a.shape[2], :]
    return BatchNorm(self.affine, self.opts)(jnp.concatenate([a, b], -1), train)


class Zero(nn.Module):
  """The 'none' operation: zeros at the output resolution."""
  stride: int = 1

  def __call__(self, x, train: bool = True):
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


class Identity(nn.Module):
  def __call__(self, x, train: bool = True):
    return x


class Pool(nn.Module):
  """3x3 max or average pooling with padding 1; average excludes the padding."""
  kind: str
  stride: int = 1
  window: int = 3

  def __call__(self, x, train: bool = True):
    s, w, p = self.stride, self.window, self.window // 2
    pad = ((p, p), (p, p))
    if self.kind == "max":
      return nn.max_pool(x, (w, w), strides=(s, s), padding=pad)
    return nn.avg_pool(x, (w, w), strides=(s, s), padding=pad,
                       count_include_pad=False)


class Conv7x1_1x7(nn.Module):
  """ReLU -> 1x7 conv -> 7x1 conv -> BN (used by NASNet/AmoebaNet cells)."""
  C_out: int
  stride: int
  affine: bool = True
  opts: OpOptions = OpOptions()

  @nn.compact
  def __call__(self, x, train: bool = True):
    s = self.stride
    x = nn.relu(x)
    x = nn.Conv(self.C_out, (1, 7), strides=(1, s), padding=((0, 0), (3, 3)),
                use_bias=False, kernel_init=torch_default_init, dtype=self.opts.dtype)(x)
    x = nn.Conv(self.C_out, (7, 1), strides=(s, 1), padding=((3, 3), (0, 0)),
                use_bias=False, kernel_init=torch_default_init, dtype=self.opts.dtype)(x)
    return BatchNorm(self.affine, self.opts)(x, train)


def count_params(tree) -> int:
  """Total number of scalar entries in a pytree of arrays."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


__all__ = [
    "OpOptions", "BatchNorm", "DepthwiseConv", "ReLUConvBN", "DilConv", "SepConv",
    "SharpSepConv",
    "FactorizedReduce", "Conv7x1_1x7", "Zero", "Identity", "Pool", "DEPTHWISE_IMPLS",
    "depthwise_conv_shift", "depthwise_conv_dense", "depthwise_conv_fused",
    "resolve_depthwise", "shifted_taps",
    "INITS", "check_init", "conv_init", "bn_scale_init",
    "torch_default_init", "count_params",
]
