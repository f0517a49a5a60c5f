"""Depthwise convolution forms on this backend: forward + backward ms and compile s per op.

    python benchmarks/depthwise_forms.py
    python benchmarks/depthwise_forms.py --shapes=64x8x64 --forms=dense,blocks16,shift

For each input (N, H, C) and kernel (5x5; 3x3 dilation 2, the DARTS dil_conv's
and sep_conv's first layers), times the gradient of sum(tanh(conv(x, w))) w.r.t.
x and w (min of `--repeats` after a compile) for each form:

* `dense`: `ops.depthwise_conv_dense`, one dense convolution with a
  block-diagonal kernel (C times the work; 'auto' on CPU below 4096 positions
  and in second-order programs);
* `xla`: XLA's grouped convolution (`feature_group_count=C`);
* `shift`: `ops.depthwise_conv_shift`, a sum of k*k shifted slices;
* `fused`: `ops.depthwise_conv_fused`, shift-and-add forward
  and input gradient, the dense form's kernel gradient;
* `blocks<g>`: separate dense convolutions over g-channel blocks, concatenated;
* `grouped<g>`: the block-diagonal kernel as one grouped convolution of g-channel groups.

Each form is checked against `dense` (max abs difference printed). One
markdown row per (shape, kernel): ms / compile s for each form.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jdarts import ops  # noqa: E402
from jdarts.spaces.darts_cnn import batched_edges  # noqa: E402


def _conv(x, w, pad, dil, groups=1):
  """Stride-1 NHWC/HWIO convolution, as the batched-edge cell calls XLA."""
  return batched_edges._conv(x, w, 1, pad, dil, groups)  # pylint: disable=protected-access


def blocks(x, w, pad, dil, g):
  """Dense block-diagonal convolutions over g-channel blocks, concatenated."""
  C = x.shape[-1]
  return jnp.concatenate([ops.depthwise_conv_dense(x[..., b:b + g], w[..., b:b + g], 1, pad,
                                                   dil) for b in range(0, C, g)], -1)


def grouped(x, w, pad, dil, g):
  """The block-diagonal kernel within g-channel groups, as one grouped convolution."""
  C, k = x.shape[-1], w.shape[0]
  G = C // g
  wk = w[:, :, 0, :].reshape(k, k, G, g)
  full = wk[:, :, :, None, :] * jnp.eye(g, dtype=w.dtype)[None, None, None]
  full = jnp.transpose(full, (0, 1, 3, 2, 4)).reshape(k, k, g, C)
  return _conv(x, full, pad, dil, groups=G)


def form_fn(name: str, pad: int, dil: int, C: int):
  """(x, w) -> depthwise output for form `name`; None if it does not apply to C."""
  if name == "dense":
    return lambda x, w: ops.depthwise_conv_dense(x, w, 1, pad, dil)
  if name == "xla":
    return lambda x, w: _conv(x, w, pad, dil, groups=C)
  if name == "shift":
    return lambda x, w: ops.depthwise_conv_shift(x, w, 1, pad, dil)
  if name == "fused":
    return lambda x, w: ops.depthwise_conv_fused(x, w, 1, pad, dil)
  for prefix, fn in (("blocks", blocks), ("grouped", grouped)):
    if name.startswith(prefix):
      g = int(name[len(prefix):])
      if g >= C or C % g:
        return None
      return lambda x, w, g=g, fn=fn: fn(x, w, pad, dil, g)
  raise SystemExit(f"depthwise_forms: error: unknown form {name!r}; choose dense, fused, "
                   "xla, shift, blocks<g>, grouped<g>.")


def measure(f, x, w, repeats: int):
  """(min ms of forward + backward, compile s)."""
  g = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w))), argnums=(0, 1)))
  t0 = time.perf_counter()
  jax.block_until_ready(g(x, w))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(g(x, w))
    times.append(time.perf_counter() - t0)
  return 1e3 * min(times), compile_s


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shapes", default="64x32x16,64x16x32,64x8x64,16x32x8",
                  help="comma-separated NxHxC inputs")
  ap.add_argument("--forms", default="dense,fused,xla,shift,blocks16,grouped16")
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args(argv)
  forms = [f for f in args.forms.split(",") if f]
  rng = np.random.RandomState(0)
  print(f"backend {jax.default_backend()}, jax {jax.__version__}; ms (forward + backward, "
        "min) / compile s; max |difference| from dense")
  print("| input (N, H, C) | kernel | " + " | ".join(forms) + " |")
  print("| --- | --- | " + " | ".join("---" for _ in forms) + " |")
  for shape in args.shapes.split(","):
    N, H, C = (int(v) for v in shape.split("x"))
    x = jnp.asarray(rng.randn(N, H, H, C), jnp.float32)
    for k, pad, dil in ((5, 2, 1), (3, 2, 2)):
      w = jnp.asarray(rng.randn(k, k, 1, C), jnp.float32)
      ref = ops.depthwise_conv_dense(x, w, 1, pad, dil)
      cells = []
      for name in forms:
        f = form_fn(name, pad, dil, C)
        if f is None:
          cells.append("-")
          continue
        err = float(jnp.abs(f(x, w) - ref).max())
        ms, c = measure(f, x, w, args.repeats)
        cells.append(f"{ms:.1f} / {c:.2f} ({err:.0e})")
      print(f"| {N}, {H}, {C} | {k}x{k} dil {dil} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
