"""How far a search on N (fake CPU) devices drifts from one device (issue 11, part 5).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python benchmarks/device_drift.py --devices=4 --steps=10 --out=/tmp/d4.npz
    python benchmarks/device_drift.py --devices=1 --steps=10 --out=/tmp/d1.npz
    python benchmarks/device_drift.py --devices=1 --steps=10 --perturb=1e-7 --out=/tmp/p.npz
    python benchmarks/device_drift.py --compare /tmp/d1.npz /tmp/d4.npz /tmp/p.npz

Runs `--steps` search steps of a config (default configs/quickstart.py, the same
global batches on every device count) and saves the alphas and the weight-
gradient norm after every step. `--perturb=e` adds e * N(0, 1) to every initial
weight: the control that tells float32 reduction order (a cause that only the
device count brings) from dynamics that amplify any 1e-7 difference.
`--compare A B ...` prints, per step, max |alphas_B - alphas_A| / max |alphas_A|
and the relative grad_norm difference of each file against the first.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))


def run(args) -> None:
  import jax
  from jdarts import experiment, parallel, runs

  cfg = runpy.run_path(args.config)["get_config"]()
  if args.cache:  # the perturbed control reuses the unperturbed run's compilation
    runs.enable_compilation_cache(args.cache)
  cfg.parallel.num_devices = args.devices
  if args.method:
    cfg.arch.method = args.method
  data = experiment.build_data(cfg)
  spe = experiment.steps_per_epoch(cfg, data)
  axis = parallel.AXIS if args.devices > 1 else None
  space = experiment.build_space(cfg, data.info, bn_axis_name=axis)
  schedule, w_opt, a_opt, state = experiment.init_search(cfg, space, spe)
  if args.perturb:
    leaves, tree = jax.tree_util.tree_flatten(state.params)
    rng = np.random.RandomState(0)
    leaves = [x + args.perturb * rng.randn(*x.shape).astype(x.dtype) for x in leaves]
    state = state.replace(params=jax.tree_util.tree_unflatten(tree, leaves))
  from jdarts import search as search_lib
  import inspect
  kw = dict(weight_decay=cfg.optim.weight_decay)
  if "optim_cfg" in inspect.signature(search_lib.make_search_step).parameters:
    kw["optim_cfg"] = cfg.optim  # older code (before issue 11) has no virtual-step choice
  step = search_lib.make_search_step(space, cfg.arch, w_opt, a_opt, schedule, axis_name=axis,
                                     **kw)
  ps = parallel.ParallelStep(step, backend="pmap" if axis else "none",
                             devices=jax.local_devices()[:args.devices])
  s = ps.put_state(state)
  alphas, gnorm = [], []
  t0 = time.time()
  for _ in range(args.steps):
    s, m = ps(s, next(data.train), next(data.val))
    host = jax.device_get(ps.get_state(s))
    alphas.append(np.concatenate([np.ravel(host.alphas[k]) for k in sorted(host.alphas)]))
    gnorm.append(float(jax.device_get(ps.get_metrics(m))["grad_norm"]))
  np.savez(args.out, alphas=np.stack(alphas), grad_norm=np.array(gnorm))
  print(f"{args.devices} device(s), perturb {args.perturb}: {args.steps} steps in "
        f"{time.time() - t0:.1f} s -> {args.out}")


def compare(paths) -> None:
  ref = np.load(paths[0])
  for p in paths[1:]:
    other = np.load(p)
    print(f"{p} vs {paths[0]}")
    print("step  alphas max|diff|/max|a|  grad_norm rel diff")
    for i, (a, b) in enumerate(zip(ref["alphas"], other["alphas"])):
      da = np.abs(b - a).max() / max(np.abs(a).max(), 1e-30)
      dg = abs(other["grad_norm"][i] - ref["grad_norm"][i]) / ref["grad_norm"][i]
      print(f"{i + 1:4d}  {da:22.2e}  {dg:18.2e}")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), os.pardir,
                                                  "configs", "quickstart.py"))
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--perturb", type=float, default=0.0)
  p.add_argument("--method", default="")
  p.add_argument("--out", default="/tmp/drift.npz")
  p.add_argument("--cache", default="", help="XLA compilation cache directory")
  p.add_argument("--compare", nargs="+")
  args = p.parse_args()
  if args.compare:
    compare(args.compare)
  else:
    run(args)


if __name__ == "__main__":
  main()
