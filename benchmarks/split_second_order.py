"""The second-order architecture steps compiled as several programs instead of one.

    python benchmarks/split_second_order.py                      # small setting
    python benchmarks/split_second_order.py --methods=finite_difference --forms=auto

A search step is one XLA program; the second-order estimators put three or four
gradient evaluations into it, and XLA:CPU compiles such a program slower per
instruction, in more memory, and (with the fused depthwise form) in ~20 GB
(benchmarks/RESULTS.md), which is why they trace within
`depthwise.compile_light()`. Here the same estimate is computed by separately
compiled programs called in turn, as a prototype of a multi-program step:

* `parts`: the virtual step w' and v = grad_w' L_val(w'), pulled back to u
  (`hypergrad_estimators._second_order_parts`), and grad_alpha L_val(w');
* `finite_difference`: one program for grad_alpha L_train(w + eps u), called
  at +eps and -eps (eq. 8);
* `exact_hvp`: one program for [grad^2_{alpha,w} L_train] u by jvp of the
  alpha gradient (always in `compile_light`: it differentiates twice);
* `finish`: the combination and the Adam update of the alphas.

`--forms=auto` lets the first-order programs take 'auto' outside
`compile_light` (the fused form at the small setting), `--forms=light` keeps
them dense as the one-program step does (a named `--depthwise` form holds in
every program). Prints one JSON object per (method, forms): the first call's s
(every program compiled), ms per step (min / median), host peak MB of
compiling and of running (VmHWM, reset in between, Linux), and the alphas'
sum after the steps. `split_arch_grad` is tested against
`hypergrad.arch_grad` (tests/test_benchmark_tools.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from jdarts import depthwise  # noqa: E402
from jdarts import host_memory  # noqa: E402
from jdarts import hypergrad_estimators as he  # noqa: E402
from jdarts import parallel  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step  # noqa: E402

METHODS = ("finite_difference", "exact_hvp")


def split_arch_grad(method: str, train, val, options: he.Options, light: bool = True,
                    jit=jax.jit):
  """The `method` estimate as separately compiled programs: `(params, alphas, tb, vb) -> g`.

  train, val: `(params, alphas, batch) -> (loss, aux)`; `options`: the
  estimator settings (`hypergrad.options(method, ...)`, no device axis). With
  `light` every program traces within `depthwise.compile_light()` (the dense
  form), else only the second-order `exact_hvp` product does.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}: one of {METHODS}")
  o = options

  def parts(params, alphas, tb, vb):
    with depthwise.compile_light(light):
      g_a, u, _ = he._second_order_parts(train, val, params, alphas, tb, vb, o)
    norm = optax.tree_utils.tree_norm(u)
    return g_a, u, o.fd_eps / jnp.where(norm > 0, norm, jnp.ones_like(norm))

  def point(params, alphas, tb, u, eps):
    with depthwise.compile_light(light):
      return he.device_grad(train, 1, he._axpy(eps, u, params), alphas, tb, None)[0]

  def product(params, alphas, tb, u):
    with depthwise.compile_light():
      return he._mixed_product(train, params, alphas, tb, u, None)

  parts_c, point_c, product_c = jit(parts), jit(point), jit(product)
  fd = lambda gp, gm, eps: jax.tree.map(lambda p, m: (p - m) / (2 * eps), gp, gm)
  fd_c, axpy_c = jit(fd), jit(lambda m, g: he._axpy(1.0, m, g))

  def grad(params, alphas, tb, vb):
    g_a, u, eps = parts_c(params, alphas, tb, vb)
    if method == "finite_difference":
      mixed = fd_c(point_c(params, alphas, tb, u, eps), point_c(params, alphas, tb, u, -eps),
                   eps)
    else:
      mixed = product_c(params, alphas, tb, u)
    return axpy_c(mixed, g_a)

  return grad


def run(method: str, light: bool, args) -> dict:
  from jdarts import hypergrad
  space, cfg, _, a_opt, sched, state, tb, vb = search_step.build(
      args.C, args.layers, args.batch, args.depthwise, args.primitives)
  host_memory.drop_compiled()
  loss = lambda p, a, b: space.loss(p, a, b, None, None)[:2]
  o = hypergrad.options(method, **search_step.estimator_kwargs(cfg, sched, state.w_opt_state,
                                                               state.step))
  opts = parallel.default_compiler_options() or None
  grad = split_arch_grad(method, loss, loss, o, light,
                         jit=lambda f: jax.jit(f, compiler_options=opts))
  adam = jax.jit(lambda g, s, a: (lambda u, s2: (optax.apply_updates(a, u), s2))(
      *a_opt.update(g, s, a)), compiler_options=opts)
  p, a, a_state = state.params, state.alphas, state.a_opt_state
  t0 = time.perf_counter()
  g = grad(p, a, tb, vb)  # compiles every program in its first call
  a, a_state = adam(g, a_state, a)
  jax.block_until_ready(a)
  compile_s = time.perf_counter() - t0
  compile_peak = search_step.peak_rss_mb()
  host_memory.release()
  search_step.reset_peak_rss()
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    a, a_state = adam(grad(p, a, tb, vb), a_state, a)
    jax.block_until_ready(a)
    times.append(time.perf_counter() - t)
  times.sort()
  return {"method": method, "forms": "light" if light else "auto",
          "first_call_s": round(compile_s, 1), "ms_min": round(1e3 * times[0], 1),
          "ms_per_step": round(1e3 * times[len(times) // 2], 1),
          "compile_peak_rss_mb": compile_peak, "run_peak_rss_mb": search_step.peak_rss_mb(),
          "alphas_sum": float(sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(a)))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  search_step.add_supernet_args(ap)  # a named --depthwise form holds in every program
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--forms", default="auto,light")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    print(json.dumps(run(args.methods, args.forms == "light", args)), flush=True)
    return
  import subprocess
  for method in args.methods.split(","):
    for forms in args.forms.split(","):  # each in a fresh process: peaks per row
      subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                      f"--methods={method}", f"--forms={forms}", f"--C={args.C}",
                      f"--layers={args.layers}", f"--batch={args.batch}",
                      f"--repeats={args.repeats}", f"--depthwise={args.depthwise}",
                      f"--primitives={args.primitives}"], check=False)


if __name__ == "__main__":
  main()
