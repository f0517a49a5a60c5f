"""Depthwise convolutions in four forms with one parameter layout, and which one 'auto' means.

Every form takes x (N, H, W, C), a kernel (k, k, 1, C) (the layout of
`nn.Conv(feature_group_count=C)`), a stride, a symmetric padding and a
dilation, and returns (N, H_out, W_out, C), H_out = (H + 2p - d(k-1) - 1) //
s + 1:

* `'xla'`: XLA's grouped convolution (`ops.DepthwiseConv` builds it with
  `nn.Conv`); fast on GPU/TPU, slow on XLA:CPU (a generic loop).
* `'shift'`: `depthwise_conv_shift`, a sum of k*k shifted, scaled slices;
  plain autodiff keeps every slice for the backward pass.
* `'dense'`: `depthwise_conv_dense`, a dense convolution with a
  block-diagonal kernel: C times the work, through XLA:CPU's fast library,
  and one op to compile.
* `'fused'`: `depthwise_conv_fused`, the shift form's forward and input
  gradient (one fused loop each) with the dense form's kernel gradient:
  the fastest on CPU, and the slowest of the CPU forms to compile.

`resolve_depthwise` maps 'auto' to one of them per convolution, from the
backend, the width, the input's size and whether the program being traced is
a second-order one (`compile_light`).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax import lax

DEPTHWISE_IMPLS = ("auto", "xla", "shift", "dense", "fused")


# Above this width the dense form's C-fold extra work outweighs XLA:CPU's
# slow grouped convolution (benchmarks/RESULTS.md).
DENSE_DEPTHWISE_MAX_CHANNELS = 128

# Input positions (N * H * W) from which 'auto' takes the fused form on CPU.
# Below, a convolution runs in well under a millisecond in either form and the
# fused form's longer compile is not repaid: the quickstart (batch 32 of 8x8
# digits, 2048 positions) searched cold in 72 s dense and 100 s fused. The
# benchmark's small setting (batch 16 of 32x32) and the paper's are above it
# in all but the small setting's last stage (benchmarks/RESULTS.md).
FUSED_MIN_POSITIONS = 4096

_COMPILE_LIGHT = contextvars.ContextVar("jdarts_depthwise_compile_light", default=False)


@contextlib.contextmanager
def compile_light(active: bool = True):
  """Within it, `resolve_depthwise` never turns 'auto' into the fused form.

  For programs that differentiate the network several times over (the
  second-order hypergradients, Hessian-vector products): XLA:CPU compiled a
  second-order search step (small setting) with the fused form in twice the
  time and 19-22 GB of host memory, against ~4.4 GB with the dense form
  (benchmarks/RESULTS.md). `hypergrad.arch_grad` and the search step enter
  it for such methods; it acts while a function is traced, so enter it
  inside the jitted function. Named forms ('fused', 'dense', ...) are
  unaffected.

  Args:
    active: False makes it a no-op (for `with compile_light(flag):`).
  """
  token = _COMPILE_LIGHT.set(bool(active) or _COMPILE_LIGHT.get())
  try:
    yield
  finally:
    _COMPILE_LIGHT.reset(token)


def resolve_depthwise(impl: str, channels: int = 0, positions: int = 0) -> str:
  """Maps 'auto' to a form for the backend, the width and the input's size.

  GPU/TPU: 'xla' (native depthwise kernels). CPU: 'xla' above
  `DENSE_DEPTHWISE_MAX_CHANNELS` channels; otherwise 'fused' when the input
  has at least `FUSED_MIN_POSITIONS` positions and no `compile_light`
  context is active, else 'dense'. The fused form is the fastest on CPU
  (small benchmark setting, side by side with the reference: weight step
  1.67x the reference's speed against the dense form's ~1.16x, first-order
  architecture step 2.7x against 1.75x) but compiles slower: ~1.5x for
  first-order steps, and second-order steps took 2x longer and ~20 GB of
  host memory, hence `compile_light` (benchmarks/RESULTS.md). Other names
  pass through.

  Args:
    impl: one of `DEPTHWISE_IMPLS`.
    channels: C, the convolution's width.
    positions: N * H * W of its input; 0 (unknown) never picks 'fused'.
  """
  if impl != "auto":
    return impl
  if jax.default_backend() != "cpu" or channels > DENSE_DEPTHWISE_MAX_CHANNELS:
    return "xla"
  if positions >= FUSED_MIN_POSITIONS and not _COMPILE_LIGHT.get():
    return "fused"
  return "dense"


def _out_size(n: int, k: int, stride: int, padding: int, dilation: int) -> int:
  """A convolution's output length along an axis of length n (symmetric padding)."""
  return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def shifted_taps(x, kh: int, kw: int, stride: int, padding: int, dilation: int):
  """The strided slices of the padded input that each kernel tap multiplies.

  Args:
    x: (N, H, W, C) input.
    kh, kw: kernel height and width.
    stride, padding, dilation: as for a convolution (symmetric padding).

  Yields:
    (i, j, patch) for every tap in row-major order, patch (N, H_out, W_out, C)
    with H_out = (H + 2p - d(kh - 1) - 1) // stride + 1 (W_out likewise).
  """
  _, H, W, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out_hw = _out_size(H, kh, stride, padding, dilation), _out_size(W, kw, stride, padding, dilation)
  for i in range(kh):
    for j in range(kw):
      yield i, j, _tap_slice(xp, i, j, out_hw, stride, dilation)


def _tap_slice(xp, i: int, j: int, out_hw, stride: int, dilation: int):
  """xp[:, i d + s h, j d + s w, :] for h < H_out, w < W_out: tap (i, j)'s input."""
  N, _, _, C = xp.shape
  Ho, Wo = out_hw
  r, c = i * dilation, j * dilation
  return lax.slice(xp, (0, r, c, 0), (N, r + (Ho - 1) * stride + 1, c + (Wo - 1) * stride + 1, C),
                   (1, stride, stride, 1))


def depthwise_conv_shift(x, kernel, stride: int, padding: int, dilation: int):
  """Depthwise convolution as a sum of k*k strided slices of the padded input.

  Args:
    x: (N, H, W, C) input.
    kernel: (k, k, 1, C) kernel, the layout of `nn.Conv(feature_group_count=C)`.
    stride, padding, dilation: as for a convolution (symmetric padding).

  Returns:
    (N, H_out, W_out, C) with H_out = (H + 2p - d(k - 1) - 1) // stride + 1.
    The fused form's forward pass, differentiated by plain autodiff.
  """
  k = kernel.shape[0]
  _, H, W, _ = x.shape
  xp = lax.pad(x, jnp.array(0, x.dtype),
               ((0, 0, 0), (padding, padding, 0), (padding, padding, 0), (0, 0, 0)))
  return _tap_sum(xp, kernel, (_out_size(H, k, stride, padding, dilation),
                               _out_size(W, k, stride, padding, dilation)), stride, dilation)


def depthwise_conv_dense(x, kernel, stride: int, padding: int, dilation: int):
  """Depthwise convolution as a dense convolution with a block-diagonal kernel.

  C times the multiply-adds of a true depthwise convolution, but XLA:CPU runs
  dense convolutions through its optimised library and grouped ones through a
  slow generic loop, so at the small widths of CPU searches this is faster,
  and it compiles as quickly as one convolution. Same arguments and result as
  `depthwise_conv_shift`.
  """
  C = x.shape[-1]
  full = kernel[:, :, 0, :][:, :, None, :] * jnp.eye(C, dtype=kernel.dtype)
  return lax.conv_general_dilated(
      x, full.astype(x.dtype), (stride, stride), ((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_taps(kernel, dtype):
  """(k, k, 1, C) -> the k*k taps in row-major order, each (1, 1, 1, C), in one op."""
  k, C = kernel.shape[0], kernel.shape[-1]
  return lax.split(kernel.astype(dtype).reshape(k * k, 1, 1, C), (1,) * (k * k))


def _tap_sum(xp, kernel, out_hw, stride: int, dilation: int):
  """sum_{i,j} kernel[i, j] * xp[:, i d + s h, j d + s w, :]: a depthwise correlation.

  Args:
    xp: (N, Hp, Wp, C), already padded.
    kernel: (k, k, 1, C).
    out_hw: (H_out, W_out).
    stride, dilation: s and d above.

  Returns:
    (N, H_out, W_out, C). Written with one op per tap and step (a
    strided slice, a multiply, an add): the supernet holds ~100 of these
    convolutions, and every traced equation costs tracing and XLA compile
    time.
  """
  k = kernel.shape[0]
  taps = _kernel_taps(kernel, xp.dtype)
  out = None
  for i in range(k):
    for j in range(k):
      patch = _tap_slice(xp, i, j, out_hw, stride, dilation)
      term = jnp.multiply(patch, taps[i * k + j])  # broadcasts (1, 1, 1, C)
      out = term if out is None else lax.add(out, term)
  return out


# Jitted: traced (and lowered) once per shape, not once per convolution.
_depthwise_fused_forward = jax.jit(depthwise_conv_shift, static_argnums=(2, 3, 4))


def _input_grad_padding(g_hw, x_hw, k: int, stride: int, padding: int, dilation: int):
  """(low, high) padding per spatial axis of the cotangent in `_depthwise_input_grad`."""
  lo = (k - 1) * dilation - padding
  return tuple((lo, n + (k - 1) * dilation - lo - ((m - 1) * stride + 1))
               for m, n in zip(g_hw, x_hw))


def _depthwise_input_grad(g, kernel, x_shape, stride: int, padding: int, dilation: int):
  """The input gradient of a depthwise correlation, itself a stride-1 tap sum.

  out[h] = sum_a w[a] xpad[h s + a d] transposes to
  dx[i] = sum_a w[k-1-a] gu[i + a d - ((k-1) d - p)], gu being g with s-1
  zeros between its rows and columns: a tap sum of gu (padded by
  (k-1) d - p) with the flipped kernel, which XLA fuses into one loop as it
  does the forward.
  """
  _, H, W, _ = x_shape
  k = kernel.shape[0]
  (lh, hh), (lw, hw) = _input_grad_padding(g.shape[1:3], (H, W), k, stride, padding, dilation)
  gp = lax.pad(g, jnp.array(0, g.dtype),
               ((0, 0, 0), (lh, hh, stride - 1), (lw, hw, stride - 1), (0, 0, 0)))
  # Materialised on its own: left to itself XLA fuses the k*k-tap sum into
  # the consumers that add up the input's gradients (pooling's, the skip's),
  # and that one large fusion ran 1.5-2x slower than the parts
  # (benchmarks/RESULTS.md).
  return lax.optimization_barrier(_tap_sum(gp, lax.rev(kernel, (0, 1)), (H, W), 1, dilation))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _depthwise_input_grad_transpose(u, kernel, out_hw, stride: int, padding: int,
                                    dilation: int):
  """The transpose of `_depthwise_input_grad` (in g), i.e. the convolution itself.

  Written op by op as the transpose (a zero-padded copy per tap instead of a
  slice, a strided slice instead of the interior padding) so that JAX's own
  transposition, in reverse mode, gives back `_depthwise_input_grad`'s slices
  of one padded array.

  Args:
    u: (N, H, W, C), shaped like the convolution's input.
    kernel: (k, k, 1, C).
    out_hw: the convolution's (H_out, W_out).

  Returns:
    (N, H_out, W_out, C).
  """
  _, H, W, _ = u.shape
  k = kernel.shape[0]
  (lh, hh), (lw, hw) = _input_grad_padding(out_hw, (H, W), k, stride, padding, dilation)
  Hp = lh + (out_hw[0] - 1) * stride + 1 + hh
  Wp = lw + (out_hw[1] - 1) * stride + 1 + hw
  zero = jnp.array(0, u.dtype)
  u = lax.optimization_barrier(u)
  taps = _kernel_taps(lax.rev(kernel, (0, 1)), u.dtype)
  z = None
  for i in range(k):
    for j in range(k):
      r, c = i * dilation, j * dilation
      term = lax.pad(jnp.multiply(u, taps[i * k + j]), zero,
                     ((0, 0, 0), (r, Hp - r - H, 0), (c, Wp - c - W, 0), (0, 0, 0)))
      z = term if z is None else lax.add(z, term)
  z = lax.pad(z, zero, ((0, 0, 0), (-lh, -hh, 0), (-lw, -hw, 0), (0, 0, 0)))
  return lax.slice(z, (0, 0, 0, 0), z.shape, (1, stride, stride, 1))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def depthwise_conv_fused(x, kernel, stride: int, padding: int, dilation: int):
  """Depthwise convolution: tap-sum forward and input gradient, dense kernel gradient.

  The forward pass and the input gradient are each a sum of k*k shifted
  slices, which XLA fuses into one loop doing the true depthwise work; only
  the kernel gradient takes the dense block-diagonal form's route (one dense
  convolution through XLA:CPU's fast library, whose C x C kernel gradient's
  diagonal is the depthwise one). Plain autodiff of `depthwise_conv_shift`
  would keep every tap's slice for the backward pass and reduce k*k times;
  the dense form does C times the work in all three convolutions. Same
  arguments and result as `depthwise_conv_shift`.

  A `jax.custom_jvp` whose tangent map JAX transposes into that backward
  pass, so every transformation works, to any order: reverse mode, forward
  mode, forward-over-reverse (the exact HVP's jvp of a gradient, even with
  respect to weights that gradient does not differentiate).
  """
  return _depthwise_fused_forward(x, kernel, stride, padding, dilation)


@depthwise_conv_fused.defjvp
def _depthwise_fused_jvp(stride, padding, dilation, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  y = _depthwise_fused_forward(x, kernel, stride, padding, dilation)
  # The convolution in x, written as the transpose of its own input
  # gradient: reverse mode transposes it back into the tap sum of
  # `_depthwise_input_grad` (slices of one padded array) instead of k*k
  # zero-padded copies of the cotangent.
  y_dot = _depthwise_input_grad_transpose(x_dot, kernel, y.shape[1:3], stride, padding,
                                          dilation)
  # In the kernel, the dense form: its transpose is one dense kernel gradient.
  return y, y_dot + depthwise_conv_dense(x, kernel_dot, stride, padding, dilation)


__all__ = [
    "DEPTHWISE_IMPLS", "DENSE_DEPTHWISE_MAX_CHANNELS", "FUSED_MIN_POSITIONS",
    "compile_light", "resolve_depthwise", "shifted_taps", "depthwise_conv_shift",
    "depthwise_conv_dense", "depthwise_conv_fused",
]
