"""Times one DARTS search cell's forward + backward, per-edge vs per-source edges.

    python benchmarks/cell_step.py --C=8 --hw=32 --batch=16 \
        --variants=edge:dense,source:dense,source:xla,source:shift [--reduction]

A variant is `edge` (SearchCell, one MixedOp per edge) or `source`
(BatchedSearchCell, all edges leaving a state together), then the depthwise
implementation. Each variant is one jitted gradient of a random projection of
the cell output w.r.t. params, both inputs and the mixing weights (what the
weight step backpropagates through), compiled once. Variants are timed in
turn, A B C A B C ..., so drift on a shared machine hits them alike. Prints
one JSON row per variant: compile_s, median_ms and min_ms (wall), and
cpu_median_ms (CPU time of all threads: the work done, less sensitive to
other processes on a shared machine than wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
from jdarts import genotypes, mixing, ops  # noqa: E402
from jdarts.spaces import darts_cnn  # noqa: E402


def make_step(kind, depthwise, C, reduction, steps, primitives):
  cls = darts_cnn.BatchedSearchCell if kind == "source" else darts_cnn.SearchCell
  cell = cls(C, reduction, False, primitives, ops.OpOptions(depthwise=depthwise),
             steps, steps)

  def loss(params, s0, s1, w, r):
    return jnp.sum(cell.apply({"params": params}, s0, s1, w) * r)

  return cell, jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--C", type=int, default=8)
  ap.add_argument("--hw", type=int, default=32)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--steps", type=int, default=4)
  ap.add_argument("--reduction", action="store_true")
  ap.add_argument("--primitives", default="", help="comma-separated subset")
  ap.add_argument("--variants", default="edge:auto,source:auto")
  ap.add_argument("--repeats", type=int, default=7)
  args = ap.parse_args(argv)

  primitives = tuple(args.primitives.split(",")) if args.primitives else genotypes.PRIMITIVES
  rng = np.random.RandomState(0)
  C_in = args.steps * args.C  # a cell's input: the previous cell's concatenated nodes
  s0 = jnp.asarray(rng.randn(args.batch, args.hw, args.hw, C_in), jnp.float32)
  s1 = jnp.asarray(rng.randn(args.batch, args.hw, args.hw, C_in), jnp.float32)
  w = mixing.mix("softmax", jnp.asarray(
      rng.randn(darts_cnn.num_edges(args.steps), len(primitives)), jnp.float32))
  hw_out = args.hw // 2 if args.reduction else args.hw
  r = jnp.asarray(rng.randn(args.batch, hw_out, hw_out, args.steps * args.C), jnp.float32)

  runs = []
  for variant in args.variants.split(","):
    kind, depthwise = variant.split(":")
    cell, step = make_step(kind, depthwise, args.C, args.reduction, args.steps, primitives)
    params = cell.init(jax.random.PRNGKey(0), s0, s1, w)["params"]
    t0 = time.perf_counter()
    compiled = step.lower(params, s0, s1, w, r).compile()
    runs.append(dict(variant=variant, fn=compiled, params=params, times=[], cpu=[],
                     compile_s=time.perf_counter() - t0))
    jax.block_until_ready(compiled(params, s0, s1, w, r))  # warm-up
  for _ in range(args.repeats):
    for run in runs:
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(run["fn"](run["params"], s0, s1, w, r))
      run["times"].append(time.perf_counter() - t0)
      run["cpu"].append(time.process_time() - c0)
  for run in runs:
    row = {"variant": run["variant"], "C": args.C, "hw": args.hw, "batch": args.batch,
           "steps": args.steps, "reduction": args.reduction,
           "compile_s": round(run["compile_s"], 2),
           "median_ms": round(1e3 * statistics.median(run["times"]), 2),
           "min_ms": round(1e3 * min(run["times"]), 2),
           "cpu_median_ms": round(1e3 * statistics.median(run["cpu"]), 2),
           "params": ops.count_params(run["params"]), "backend": jax.default_backend()}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
