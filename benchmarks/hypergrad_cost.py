"""Cost of each architecture-gradient estimator on the DARTS CNN search supernet.

    python benchmarks/hypergrad_cost.py --C=8 --layers=5 --batch=16 \
        [--methods=first_order,unrolled,exact_hvp,finite_difference] [--parts] \
        [--reference=unrolled] [--solver-iters=20] [--unroll-solver] \
        [--out=hypergrad_cost.jsonl]

For every method, the architecture gradient alone (`hypergrad.arch_grad`, with
the search's virtual step and estimator options: `search_step.arch_grad_fn`) is jitted,
compiled (timed apart) and run `--repeats` times on random 32x32x3 inputs.
One JSON object per line: median/min ms per call, compile seconds, XLA's
memory analysis of the compiled program (temp + argument + output bytes; on
CPU too), the program's flop count (`cost_analysis`), the device's running
peak where the backend reports it, and the load average. On a shared CPU
machine a high load inflates wall times; the process CPU seconds
(`compile_cpu_s`, `cpu_ms_per_call`, all threads) are less sensitive to it.

`--parts` also times the building blocks that the second-order estimators
differ in, on the train batch at the same state (v is a fixed random
direction of unit norm):

* grad_w            grad_w L_train (full backward pass; one virtual step)
* grad_alpha        grad_alpha L_train (backward pass without weight gradients)
* grad_w_alpha      both gradients from one backward pass
* mixed_jvp         [d^2 L / d alpha d w] v by jvp of grad_alpha (exact_hvp's part)
* mixed_fd          grad_alpha(w + eps v) - grad_alpha(w - eps v) (finite_difference's)
* mixed_linearize   grad_w and [d^2 L / d alpha d w] v from one `jax.linearize`
                    of the joint gradient, i.e. sharing the primal pass with the
                    virtual step (what a fused exact_hvp would cost)

`--variants` adds `exact_hvp_shared`, an exact-HVP estimator built that way
(the virtual step's gradient and the Hessian-vector product share one
linearization); its result is checked against `exact_hvp`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jdarts import hypergrad, optim, parallel  # noqa: E402
from jdarts import hypergrad_compare as hc  # noqa: E402
import search_step  # noqa: E402  (the shared supernet setting)


def build(C, layers, batch, depthwise, primitives, image=32):
  """Space, config, schedule, a search state (non-zero alphas) and two random batches."""
  space, cfg, _, _, sched, state, tb, vb = search_step.build(
      C, layers, batch, depthwise, primitives, image=image, alpha_scale=1e-3)
  return space, cfg, sched, state, tb, vb


def exact_hvp_shared(loss, params, alphas, tb, vb, xi, virtual, w_opt_state):
  """eq. 7 with the virtual step's gradient and the HVP sharing one linearization.

  `virtual` is the search's `optim.VirtualStep` (its optimizer must not be None).
  """
  joint = lambda w: jax.grad(loss, argnums=(0, 1))(w, alphas, tb)
  (g_w, _), lin = jax.linearize(joint, params)
  updates, _ = virtual.optimizer.update(g_w, virtual.state_of(w_opt_state), params)
  w1 = optax.apply_updates(params, updates)
  v, g_a = jax.grad(loss, argnums=(0, 1))(w1, alphas, vb)
  _, mixed = lin(v)
  return jax.tree_util.tree_map(lambda g, m: g - xi * m, g_a, mixed)


def parts(loss, params, alphas, tb, v):
  """The building blocks listed in the module docstring, as (name, fn(params, alphas, tb, v))."""
  grad_alpha = lambda w, a, b: jax.grad(loss, argnums=1)(w, a, b)

  def mixed_fd(w, a, b, v):
    eps = 1e-3
    plus = jax.tree_util.tree_map(lambda x, d: x + eps * d, w, v)
    minus = jax.tree_util.tree_map(lambda x, d: x - eps * d, w, v)
    return jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * eps), grad_alpha(plus, a, b),
                                  grad_alpha(minus, a, b))

  def mixed_linearize(w, a, b, v):
    (g_w, _), lin = jax.linearize(lambda w: jax.grad(loss, argnums=(0, 1))(w, a, b), w)
    return g_w, lin(v)[1]

  return {
      "grad_w": lambda w, a, b, v: jax.grad(loss)(w, a, b),
      "grad_alpha": lambda w, a, b, v: grad_alpha(w, a, b),
      "grad_w_alpha": lambda w, a, b, v: jax.grad(loss, argnums=(0, 1))(w, a, b),
      "mixed_jvp": lambda w, a, b, v: jax.jvp(lambda w: grad_alpha(w, a, b), (w,), (v,))[1],
      "mixed_fd": mixed_fd,
      "mixed_linearize": mixed_linearize,
  }


def measure(fn, args, repeats):
  """Compile and run `fn(*args)`; returns the cost fields of a row."""
  import time
  t0, c0 = time.perf_counter(), time.process_time()
  compiled = parallel.jit(fn).lower(*args).compile()
  compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
  c0 = time.process_time()
  times = hc.time_calls(compiled, args, repeats)
  cpu_ms = 1e3 * (time.process_time() - c0) / (repeats + 1)  # incl. the warm-up call
  stats = hc.compiled_stats(compiled)
  mib = lambda b: None if b is None else b / 2**20
  row = {"ms_per_call": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times),
         "cpu_ms_per_call": cpu_ms, "compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
         "peak_mib": mib(stats["peak_bytes"]),
         "temp_mib": mib(stats["temp_bytes"]), "gflops": None if stats["flops"] is None
         else stats["flops"] / 1e9, "device_peak_mib": mib(hc.device_peak_bytes())}
  return row, compiled(*args)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  search_step.add_supernet_args(ap)
  ap.add_argument("--image", type=int, default=32)
  ap.add_argument("--methods", default="first_order,unrolled,exact_hvp,finite_difference")
  ap.add_argument("--reference", default="none",
                  help="method to compare gradients with (cos_sim, rel_err); none: skip")
  ap.add_argument("--parts", action="store_true", help="also time the building blocks")
  ap.add_argument("--variants", action="store_true", help="also time exact_hvp_shared")
  ap.add_argument("--solver-iters", type=int, default=20,
                  help="neumann_terms and cg_iters of the implicit methods")
  ap.add_argument("--unroll-solver", action="store_true",
                  help="implicit methods: Python-unrolled iterations instead of fori_loop")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  for m in methods:
    if m not in hypergrad.METHODS:
      raise SystemExit(f"unknown method {m!r}; choose from {', '.join(hypergrad.METHODS)}")

  space, cfg, sched, state, tb, vb = build(args.C, args.layers, args.batch, args.depthwise,
                                             args.primitives, args.image)
  loss = lambda p, a, b: space.loss(p, a, b, None, None)[0]
  solver_kw = dict(neumann_terms=args.solver_iters, cg_iters=args.solver_iters,
                   unroll_solver=args.unroll_solver)
  base = {"C": args.C, "layers": args.layers, "batch": args.batch, "image": args.image,
          "primitives": args.primitives or "all", "depthwise": args.depthwise,
          "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(state.params))),
          "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
          "jax": jax.__version__, "solver_iters": args.solver_iters,
          "unroll_solver": args.unroll_solver}

  def emit(row):
    row = dict(base, **row, load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(row), flush=True)
    if args.out:
      with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")

  grads = {}
  est_args = (state.params, state.alphas, tb, vb, state.w_opt_state, state.step)
  for m in methods:
    fn = search_step.arch_grad_fn(m, loss, cfg, sched, **solver_kw)
    row, grads[m] = measure(fn, est_args, args.repeats)
    emit({"kind": "method", "name": m, **row})
  if args.variants:
    virtual = optim.virtual_step(cfg.arch.get("virtual_step", "reference"), cfg.optim, sched)
    xi_of = lambda step: jnp.where(cfg.arch.xi < 0, sched(step), cfg.arch.xi)
    fn = lambda p, a, t, v, os_, step: exact_hvp_shared(loss, p, a, t, v, xi_of(step),
                                                         virtual, os_)
    row, grads["exact_hvp_shared"] = measure(fn, est_args, args.repeats)
    if "exact_hvp" in grads:
      row["rel_err_vs_exact_hvp"] = hc.relative_error(grads["exact_hvp_shared"],
                                                      grads["exact_hvp"])
    emit({"kind": "variant", "name": "exact_hvp_shared", **row})
  if args.reference != "none":
    if args.reference not in grads:
      raise SystemExit(f"--reference={args.reference} must be one of --methods")
    for m, g in grads.items():
      emit({"kind": "fidelity", "name": m, "reference": args.reference,
            "cos_sim": hc.cosine_similarity(g, grads[args.reference]),
            "rel_err": hc.relative_error(g, grads[args.reference])})
  if args.parts:
    rng = np.random.RandomState(1)
    v = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.randn(*x.shape), x.dtype),
                               state.params)
    norm = optax.tree_utils.tree_norm(v)
    v = jax.tree_util.tree_map(lambda x: x / norm, v)
    for name, fn in parts(loss, state.params, state.alphas, tb, v).items():
      row, _ = measure(fn, (state.params, state.alphas, tb, v), args.repeats)
      emit({"kind": "part", "name": name, **row})


if __name__ == "__main__":
  main()
