"""Toy: compile cost of autodiff BatchNorm against a custom_jvp normalisation.

    python benchmarks/bn_compile_toy.py 120     # 120 x (ReLU, 1x1 conv, BatchNorm)

Compiles the weight gradient of a chain of N (ReLU, 1x1 conv, batch-statistics
BatchNorm) layers, once with BatchNorm differentiated by JAX and once with a
`jax.custom_jvp` rule (tangent r * (dx - mean(dx) - y * mean(y * dx))), and
prints StableHLO and optimised-HLO instruction counts, fusions, compile CPU s,
whether forward-over-reverse (exact_hvp's pattern) still runs, and how far
the two gradients are apart. Answers whether a compact BatchNorm rule would
shorten the supernet's compile (benchmarks/RESULTS.md: it would not).
"""
import sys, time, re, functools
import jax, jax.numpy as jnp, numpy as np
from jax import lax

def bn_plain(x, eps=1e-5):
  mean = jnp.mean(x, axis=(0, 1, 2))
  c = x - mean
  var = jnp.mean(jnp.square(c), axis=(0, 1, 2))
  return c * lax.rsqrt(var + eps)

@jax.custom_jvp
def bn_jvp(x):
  return bn_plain(x)

@bn_jvp.defjvp
def _bn_jvp_rule(primals, tangents):
  (x,), (dx,) = primals, tangents
  mean = jnp.mean(x, axis=(0, 1, 2))
  c = x - mean
  r = lax.rsqrt(jnp.mean(jnp.square(c), axis=(0, 1, 2)) + 1e-5)
  y = c * r
  dy = r * (dx - jnp.mean(dx, axis=(0, 1, 2)) - y * jnp.mean(y * dx, axis=(0, 1, 2)))
  return y, dy

def net(ws, x, bn):
  # A fixed random readout: sum(y ** 2) of a BatchNorm output is ~constant, its
  # gradient ~0, and comparing two such gradients would measure round-off only.
  target = jnp.asarray(np.random.RandomState(1).randn(*x.shape), x.dtype)
  for w in ws:
    x = bn(lax.conv_general_dilated(jax.nn.relu(x), w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return jnp.sum(x * target)

def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 120):
  rng = np.random.RandomState(0)
  ws = [jnp.asarray(rng.randn(1, 1, 8, 8) * 0.3, jnp.float32) for _ in range(n)]
  x = jnp.asarray(rng.randn(16, 16, 16, 8), jnp.float32)
  out = {}
  for name, bn in (("plain", bn_plain), ("custom_jvp", bn_jvp)):
    f = jax.jit(jax.grad(functools.partial(net, bn=bn)))
    low = f.lower(ws, x)
    c0 = time.process_time(); comp = low.compile(); c1 = time.process_time()
    txt = comp.as_text()
    g = comp(ws, x)
    out[name] = g
    # forward-over-reverse still works (exact_hvp's pattern)
    hv = jax.jit(lambda ws: jax.jvp(lambda w: jax.grad(functools.partial(net, bn=bn))(w, x), (ws,), (ws,))[1])(ws)
    print(name, "stablehlo", sum(1 for l in low.as_text().splitlines() if " = " in l),
          "hlo", sum(1 for l in txt.splitlines() if " = " in l),
          "fusions", len(re.findall(r"= \S+ fusion\(", txt)),
          "compile_cpu_s", round(c1 - c0, 2), "hvp_ok", bool(jnp.isfinite(hv[0]).all()), flush=True)
  err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)) for a, b in zip(out["custom_jvp"], out["plain"]))
  print("max rel diff of weight grads", err)
main()
