"""Searches per hour: K seeds in one program (`num_seeds=K`) against K separate processes.

    python benchmarks/seeds_throughput.py --Ks=1,2,4,8 --steps=5 --out=seeds.json

The setting is the quickstart's supernet (configs/quickstart.py: DARTS CNN,
C=8, 3 cells, batch 32 of 8x8x1 images, first order, 69 steps per search).
For each K:

* one program: one process steps the K-seed search step (`jdarts.seeds`:
  the search step vmapped over the seed axis, jitted), on fixed batches;
* K processes: K processes started together, each stepping one search
  (`num_seeds=1`); they compile, wait for each other, then are timed together.

Compilation is timed apart (`compile_s`: the first step; the processes share
the persistent compilation cache, warmed by the K=1 row, as repeated
`jdarts search` runs do). `searches_per_hour` = K * 3600 / (69 * seconds per
step of all K searches) from the median of `--steps` timed steps, i.e. the
steady state without compilation, data loading and evaluation;
`searches_per_hour_with_compile` adds the compile time once per search.
Prints one JSON object per row; results in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

STEPS_PER_SEARCH = 69  # configs/quickstart.py: 3 epochs of 23 steps


def worker(K: int, steps: int, ready_dir: str, n_ready: int, cache: str) -> dict:
  """Compiles and times the K-seed step in this process; returns the measurements."""
  import jax
  import numpy as np
  from jdarts import config_lib, data, experiment, parallel, runs, search, seeds
  runs.enable_compilation_cache(cache)
  cfg = config_lib.search_defaults()
  cfg.data.name, cfg.model.init_channels, cfg.model.layers = "digits", 8, 3
  cfg.batch_size, cfg.epochs, cfg.arch.learning_rate = 32, 3, 3e-3
  info = data.DatasetInfo("digits", (8, 8, 1), 10, (0.5,), (0.25,))
  space = experiment.build_space(cfg, info)
  setups = [experiment.init_search(seeds.seed_config(cfg, k), space, 23) for k in range(K)]
  _, w_opt, a_opt, _ = setups[0]
  step = search.make_search_step(space, cfg.arch, w_opt, a_opt, setups[0].schedule,
                                 weight_decay=cfg.optim.weight_decay, optim_cfg=cfg.optim)
  rng = np.random.RandomState(0)
  one = lambda: {"image": rng.randn(32, 8, 8, 1).astype(np.float32),
                 "label": rng.randint(0, 10, 32).astype(np.int32)}
  if K == 1:  # today's num_seeds=1 program, not a vmap of size 1
    state, mk = jax.device_get(setups[0].state), one
    fn = parallel.jit(step, donate_argnums=(0,))
  else:
    state = seeds.stack_states([jax.device_get(s.state) for s in setups])
    fn = parallel.jit(seeds.vmap_step(step, state, shared_batches=False), donate_argnums=(0,))
    mk = lambda: seeds.stack_batches([one() for _ in range(K)])
  tb, vb = jax.device_put(mk()), jax.device_put(mk())
  state = jax.device_put(state)
  t0 = time.time()
  state, m = fn(state, tb, vb)
  jax.block_until_ready(m)
  compile_s = time.time() - t0
  if ready_dir:  # wait until every process has compiled, then run together
    open(os.path.join(ready_dir, str(os.getpid())), "w").close()
    while len(os.listdir(ready_dir)) < n_ready:
      time.sleep(0.05)
  times = []
  for _ in range(steps):
    t0 = time.time()
    state, m = fn(state, tb, vb)
    jax.block_until_ready(m)
    times.append(time.time() - t0)
  return {"K": K, "compile_s": compile_s, "step_s": statistics.median(times)}


def _spawn(K, steps, ready_dir, n_ready, cache):
  return subprocess.Popen(
      [sys.executable, __file__, "--worker", f"--K={K}", f"--steps={steps}",
       f"--ready_dir={ready_dir}", f"--n_ready={n_ready}", f"--cache={cache}"],
      stdout=subprocess.PIPE, text=True,
      env={**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")})


def _result(p):
  out, _ = p.communicate()
  if p.returncode:
    raise RuntimeError(f"worker failed with status {p.returncode}")
  return json.loads(out.strip().splitlines()[-1])


def _row(mode, K, compile_s, seconds_per_step_all):
  per_search = STEPS_PER_SEARCH * seconds_per_step_all / K
  return {"mode": mode, "K": K, "compile_s": round(compile_s, 1),
          "step_s_all_seeds": round(seconds_per_step_all, 3),
          "searches_per_hour": round(3600 / per_search, 1),
          "searches_per_hour_with_compile": round(
              3600 * K / (STEPS_PER_SEARCH * seconds_per_step_all + compile_s), 1),
          "load_1min": round(os.getloadavg()[0], 2)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--Ks", default="1,2,4,8")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--out", default="")
  ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "jdarts_seeds_xla"))
  ap.add_argument("--worker", action="store_true")
  ap.add_argument("--K", type=int, default=1)
  ap.add_argument("--ready_dir", default="")
  ap.add_argument("--n_ready", type=int, default=0)
  args = ap.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.K, args.steps, args.ready_dir, args.n_ready, args.cache)))
    return
  rows = []
  for K in map(int, args.Ks.split(",")):
    r = _result(_spawn(K, args.steps, "", 0, args.cache))
    rows.append(_row("one program", K, r["compile_s"], r["step_s"]))
    print(json.dumps(rows[-1]), flush=True)
    if K == 1:
      continue
    with tempfile.TemporaryDirectory() as ready:
      rs = [_result(p) for p in [_spawn(1, args.steps, ready, K, args.cache)
                                 for _ in range(K)]]
    # K searches advance together: one step of all of them takes the slowest's time.
    rows.append(_row("separate processes", K, max(r["compile_s"] for r in rs),
                     max(r["step_s"] for r in rs)))
    print(json.dumps(rows[-1]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
