"""Convolution gradients inside `lax.scan` on XLA:CPU: why a loop over edges ran 10x slower.

    python benchmarks/loop_convs.py                 # per convolution
    python benchmarks/loop_convs.py --mixed         # a DARTS edge (MixedOp), E edges

Compiling one edge (or cell) body and looping over it is the obvious way to cut
compile time, and it was measured as a trap (benchmarks/RESULTS.md, issue 2: a
two-iteration scan over the search step ran 10x slower). This finds where: for
E stacked inputs and weights, the gradient of sum(tanh(sum_e conv(x_e, w_e)))
with respect to the kernels, then the inputs, computed unrolled (a Python loop)
and in one `lax.scan`, min of `--repeats` ms, for

* `xla`: `lax.conv_general_dilated` differentiated by JAX (XLA's kernel and
  input gradients: convolutions with swapped dimension numbers);
* `canonical`: `canonical_conv`, the same convolution whose gradients are
  written as plain NHWC/HWIO convolutions of transposed operands (a
  `jax.custom_jvp` whose tangent maps JAX transposes back into them; exact,
  forward-over-reverse included: tests/test_benchmark_tools.py).

With `--mixed`, one DARTS edge (every candidate operation, the
`model.depthwise` form of `--depthwise`) over E edges, unrolled and scanned,
with XLA's and with canonical convolution gradients (the 1x1 convolutions and
the dense depthwise form's; a prototype patched in for this measurement only).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from jdarts import depthwise  # noqa: E402
from jdarts import parallel  # noqa: E402

_DN = ("NHWC", "HWIO", "NHWC")


def _kernel_grad(x, g, kshape, strides, padding, dilation):
  """(kh, kw, Ci, Co) kernel gradient of conv(x, .) at cotangent g, as one plain conv.

  x: (N, H, W, Ci); g: (N, Ho, Wo, Co). The batch becomes the contracted
  feature dimension and the output positions the kernel window:
  out[i] = sum_h xpad[i d + h s] g[h], a convolution of window stride d and
  kernel dilation s.
  """
  lhs = jnp.transpose(x, (3, 1, 2, 0))  # (Ci, H, W, N)
  rhs = jnp.transpose(g, (1, 2, 0, 3))  # (Ho, Wo, N, Co)
  pads = []
  for a in range(2):
    n, k, s, d, lo = x.shape[1 + a], kshape[a], strides[a], dilation[a], padding[a][0]
    pads.append((lo, (k - 1) * d + (g.shape[1 + a] - 1) * s + 1 - (n + lo)))
  out = lax.conv_general_dilated(lhs, rhs, dilation, pads, rhs_dilation=strides,
                                 dimension_numbers=_DN)
  return jnp.transpose(out, (1, 2, 0, 3))


def _input_grad(g, w, x_shape, strides, padding, dilation):
  """(N, H, W, Ci) input gradient of conv(., w) at cotangent g, as one plain conv.

  The cotangent dilated by the stride, the kernel flipped with its feature
  axes swapped (a (kh, kw, Co, Ci) array made explicitly, so the convolution
  keeps the HWIO layout).
  """
  wt = jnp.transpose(lax.rev(w, (0, 1)), (0, 1, 3, 2))
  # The depthwise form's input gradient pads the same way (only the low padding enters).
  pad = depthwise._input_grad_padding  # pylint: disable=protected-access
  pads = [pad((g.shape[1 + a],), (x_shape[1 + a],), w.shape[a], strides[a], padding[a][0],
              dilation[a])[0] for a in range(2)]
  return lax.conv_general_dilated(g, wt, (1, 1), pads, lhs_dilation=strides,
                                  rhs_dilation=dilation, dimension_numbers=_DN)


def _xla_conv(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=_DN)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def canonical_conv(x, w, strides, padding, dilation):
  """NHWC/HWIO convolution (groups 1) whose gradients are plain NHWC/HWIO convolutions.

  Args:
    x: (N, H, W, Ci); w: (kh, kw, Ci, Co).
    strides, dilation: (sh, sw), (dh, dw) (kernel dilation).
    padding: ((lo, hi), (lo, hi)).

  Returns:
    (N, Ho, Wo, Co), as `lax.conv_general_dilated`.
  """
  return _xla_conv(x, w, strides, padding, dilation)


@canonical_conv.defjvp
def _canonical_conv_jvp(strides, padding, dilation, primals, tangents):
  x, w = primals
  x_dot, w_dot = tangents
  y = canonical_conv(x, w, strides, padding, dilation)
  # Each tangent map is the transpose of the gradient we want, so reverse
  # mode transposes it back into `_input_grad` / `_kernel_grad`.
  ct = jax.ShapeDtypeStruct(y.shape, y.dtype)
  tx = jax.linear_transpose(lambda g: _input_grad(g, w, x.shape, strides, padding, dilation), ct)
  tw = jax.linear_transpose(
      lambda g: _kernel_grad(x, g, w.shape[:2], strides, padding, dilation), ct)
  return y, tx(x_dot)[0] + tw(w_dot)[0]


def _time(fn, args, repeats):
  """(min ms of `repeats` calls, compile s) of jit(fn)(*args)."""
  t = time.perf_counter()
  c = parallel.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(c(*args))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(c(*args))
    best = min(best, time.perf_counter() - t)
  return 1e3 * best, compile_s


def _edges_loss(op, mode):
  """sum(tanh(sum_e op(x_e, w_e))) over stacked (E, ...) weights and inputs."""
  def loss(w, x):
    if mode == "loop":
      out = sum(op(x[e], jax.tree_util.tree_map(lambda a, e=e: a[e], w))
                for e in range(x.shape[0]))
    else:
      out, _ = lax.scan(lambda acc, xw: (acc + op(xw[0], xw[1]), None),
                        jnp.zeros(x.shape[1:], x.dtype), (x, w))
    return jnp.sum(jnp.tanh(out))
  return loss


def per_conv(args):
  print(f"E={args.E} edges of ({args.N}, {args.H}, {args.H}, {args.C}), stride 1; ms (min of "
        f"{args.repeats}), unrolled / scan\n")
  print("| kernel | gradient | xla | canonical |")
  print("| --- | --- | --- | --- |")
  x = jax.random.normal(jax.random.PRNGKey(0), (args.E, args.N, args.H, args.H, args.C))
  for k, pad, dil in ((3, 1, 1), (5, 4, 2), (1, 0, 1)):
    w = jax.random.normal(jax.random.PRNGKey(1), (args.E, k, k, args.C, args.C))
    conf = ((1, 1), ((pad, pad), (pad, pad)), (dil, dil))
    for wrt, name in ((0, "kernel"), (1, "input")):
      cells = []
      for conv in (_xla_conv, canonical_conv):
        op = lambda xe, we, conv=conv: conv(xe, we, *conf)
        ms = [_time(jax.grad(_edges_loss(op, m), wrt), (w, x), args.repeats)[0]
              for m in ("loop", "scan")]
        cells.append(f"{ms[0]:.2f} / {ms[1]:.2f}")
      print(f"| {k}x{k} dil {dil} | {name} | {' | '.join(cells)} |", flush=True)


@contextlib.contextmanager
def _canonical_convs():
  """jdarts' convolutions (groups 1) and dense depthwise form through `canonical_conv`.

  A prototype for this measurement: `nn.Conv` as `jdarts.ops` sees it and the
  dense depthwise form are swapped while the context is active.
  """
  import types
  import flax.linen as nn
  from jdarts import ops

  def conv_fn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, **kw):
    if (feature_group_count != 1 or isinstance(padding, str)
        or any(v != 1 for v in (lhs_dilation or ()))):
      return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                      rhs_dilation, dimension_numbers, feature_group_count, **kw)
    return canonical_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)),
                          tuple(rhs_dilation or (1, 1)))

  def dense(x, kernel, stride, padding, dilation):
    full = kernel[:, :, 0, :][:, :, None, :] * jnp.eye(x.shape[-1], dtype=kernel.dtype)
    return canonical_conv(x, full.astype(x.dtype), (stride, stride),
                          ((padding, padding), (padding, padding)), (dilation, dilation))

  saved = ops.nn, ops.depthwise_conv_dense, depthwise.depthwise_conv_dense
  ops.nn = types.SimpleNamespace(**vars(nn))
  ops.nn.Conv = functools.partial(nn.Conv, conv_general_dilated=conv_fn)
  ops.depthwise_conv_dense = depthwise.depthwise_conv_dense = dense
  try:
    yield
  finally:
    ops.nn, ops.depthwise_conv_dense, depthwise.depthwise_conv_dense = saved


def mixed(args):
  from jdarts import ops
  from jdarts.spaces.darts_cnn import PRIMITIVES, cells
  print(f"E={args.E} DARTS edges (MixedOp, every candidate, depthwise={args.depthwise}) of "
        f"({args.N}, {args.H}, {args.H}, {args.C}); weight gradient, ms (min of "
        f"{args.repeats}) and compile s, unrolled / scan\n")
  print("| convolution gradients | unrolled ms | scan ms | unrolled compile s | scan compile s |")
  print("| --- | --- | --- | --- | --- |")
  m = cells.MixedOp(args.C, 1, tuple(PRIMITIVES), ops.OpOptions(depthwise=args.depthwise))
  x = jax.random.normal(jax.random.PRNGKey(0), (args.E, args.N, args.H, args.H, args.C))
  a = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (args.E, len(PRIMITIVES))), -1)
  ps = [m.init(jax.random.PRNGKey(10 + e), x[e], a[e])["params"] for e in range(args.E)]
  params = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *ps)
  for label, ctx in (("xla", contextlib.nullcontext), ("canonical", _canonical_convs)):
    row = []
    with ctx():
      for mode in ("loop", "scan"):
        op = lambda xe, pa: m.apply({"params": pa[0]}, xe, pa[1])
        row.append(_time(jax.grad(_edges_loss(op, mode)), ((params, a), x), args.repeats))
    print(f"| {label} | {row[0][0]:.1f} | {row[1][0]:.1f} | {row[0][1]:.1f} | {row[1][1]:.1f} |",
          flush=True)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--E", type=int, default=5, help="edges (loop iterations)")
  ap.add_argument("--N", type=int, default=16)
  ap.add_argument("--H", type=int, default=32)
  ap.add_argument("--C", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--mixed", action="store_true", help="a DARTS edge instead of one conv")
  ap.add_argument("--depthwise", default="dense", help="model.depthwise for --mixed")
  args = ap.parse_args(argv)
  (mixed if args.mixed else per_conv)(args)


if __name__ == "__main__":
  main()
