"""Times the DARTS CNN search steps: median ms per step, images/s, compile s, peak memory.

    python benchmarks/search_step.py --C=8 --layers=5 --batch=16 \
        --steps=weight,arch_first_order,fused_first_order,exact_hvp,finite_difference

Each measured step is one jitted function (compiled once, timed apart), run on
random 32x32x3 inputs:

* weight             grad of the train loss w.r.t. weights + the SGD update
* arch_first_order   grad of the val loss w.r.t. alphas + the Adam update
* fused_first_order  jdarts's full first-order search step (alpha then weight update)
* unrolled / exact_hvp / finite_difference / implicit_cg
                     the architecture gradient by that estimator + the Adam update

Prints one JSON object per step kind (and writes them to --out if given). The
reference figures to compare with are in DESIGN.md / benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
from jdarts import config_lib, data, hypergrad, optim, schedules, search, spaces  # noqa: E402


def peak_memory_mb() -> float:
  """Peak device memory if the backend reports it, else peak host RSS (MB)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def add_supernet_args(ap):
  """The supernet-setting flags the search benchmarks share."""
  ap.add_argument("--C", type=int, default=8)
  ap.add_argument("--layers", type=int, default=5)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--depthwise", default="auto")
  ap.add_argument("--primitives", default="", help="comma-separated subset (profiling)")


def build(C, layers, batch, depthwise, primitives, batch_edges=False, image=32,
          alpha_scale=0.0):
  """Space, config, optimisers, schedule, a search state and two random batches.

  Batches are {'image': (batch, image, image, 3), 'label': (batch,)}; with
  alpha_scale > 0 the alphas are random normals of that scale (zero otherwise).
  """
  model = dict(init_channels=C, layers=layers, depthwise=depthwise,
               batch_edges=batch_edges)
  if primitives:
    model["primitives"] = tuple(primitives.split(","))
  info = data.DatasetInfo("synthetic", (image, image, 3), 10, (0.5,) * 3, (0.25,) * 3)
  space = spaces.get_space("darts_cnn", model, info)
  cfg = config_lib.search_defaults()
  rng = np.random.RandomState(0)
  mk = lambda: {"image": jnp.asarray(rng.randn(batch, image, image, 3), jnp.float32),
                "label": jnp.asarray(rng.randint(0, 10, batch), jnp.int32)}
  tb, vb = mk(), mk()
  sched = schedules.make_schedule(cfg.optim, 50, 100)
  w_opt = optim.weight_optimizer(cfg.optim, sched)
  a_opt = optim.arch_optimizer(cfg.arch)
  state = search.init_state(space, jax.random.PRNGKey(0), tb, w_opt, a_opt)
  if alpha_scale:
    state = state.replace(alphas=jax.tree_util.tree_map(
        lambda a: alpha_scale * jnp.asarray(rng.randn(*a.shape), a.dtype), state.alphas))
  return space, cfg, w_opt, a_opt, sched, state, tb, vb


def step_fns(space, cfg, w_opt, a_opt, sched):
  loss = lambda p, a, b: space.loss(p, a, b)[0]

  def weight(state, tb, vb):
    g = jax.grad(loss)(state.params, state.alphas, tb)
    u, os_ = w_opt.update(g, state.w_opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, u), w_opt_state=os_)

  def arch(method):
    def f(state, tb, vb):
      g = hypergrad.arch_grad(method, loss, loss, state.params, state.alphas, tb, vb,
                              xi=sched(state.step), optimizer=w_opt,
                              opt_state=state.w_opt_state)
      u, os_ = a_opt.update(g, state.a_opt_state, state.alphas)
      return state.replace(alphas=optax.apply_updates(state.alphas, u), a_opt_state=os_)
    return f

  fused = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched)
  fns = {"weight": weight, "arch_first_order": arch("first_order"),
         "fused_first_order": lambda s, t, v: fused(s, t, v)[0]}
  for m in ("unrolled", "exact_hvp", "finite_difference", "implicit_cg"):
    fns[m] = arch(m)
  return fns


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_supernet_args(ap)
  ap.add_argument("--batch_edges", action="store_true",
                  help="compute cell edges per source state (model.batch_edges)")
  ap.add_argument("--steps", default="weight,arch_first_order,fused_first_order")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)

  space, cfg, w_opt, a_opt, sched, state, tb, vb = build(
      args.C, args.layers, args.batch, args.depthwise, args.primitives, args.batch_edges)
  fns = step_fns(space, cfg, w_opt, a_opt, sched)
  for name in args.steps.split(","):
    if name not in fns:
      raise SystemExit(f"unknown step {name!r}; choose from {', '.join(fns)}")
    f = jax.jit(fns[name])
    t0 = time.perf_counter()
    compiled = f.lower(state, tb, vb).compile()
    compile_s = time.perf_counter() - t0
    times = []
    s = state
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      s = compiled(s, tb, vb)
      jax.block_until_ready(s)
      times.append(time.perf_counter() - t0)
    # One step of the bilevel search consumes a train and a val batch; the
    # weight-only and arch-only steps consume one.
    images = 2 * args.batch if name == "fused_first_order" else args.batch
    med = statistics.median(times)
    row = {"step": name, "C": args.C, "layers": args.layers, "batch": args.batch,
           "depthwise": args.depthwise, "primitives": args.primitives or "all",
           "batch_edges": args.batch_edges,
           "median_ms": 1e3 * med, "min_ms": 1e3 * min(times),
           "images_per_s": images / med, "compile_s": compile_s,
           "peak_memory_mb": peak_memory_mb(), "backend": jax.default_backend(),
           "device": str(jax.devices()[0].device_kind), "jax": jax.__version__}
    print(json.dumps(row), flush=True)
    if args.out:
      with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
