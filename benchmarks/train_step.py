"""Times the CIFAR evaluation network's training step: images/s, median ms, compile s, memory.

    python benchmarks/train_step.py                     # the paper's network (A.2.1)
    python benchmarks/train_step.py --preset=small      # C=16, 8 cells, batch 32 (CPU)
    python benchmarks/train_step.py --C=36 --layers=20 --batch=96 --dtype=bfloat16

The step is `jdarts.train.make_train_step` exactly as `jdarts train` runs it
on one device: forward with drop-path and the auxiliary head, cross-entropy
(+0.4 x auxiliary), gradients, clipping, weight decay, momentum SGD, the
BatchNorm running-average update; jitted with the state donated, on random
32x32x3 inputs. The default is the paper's evaluation network (DARTS_V2,
C=36, 20 cells, batch 96; 3.3M parameters).

Prints one JSON object (and appends it to --out if given): median and min ms
per step over --repeats timed steps (after one untimed warm-up step),
images/s at the median, compile seconds (lower + compile, apart), peak memory
(device peak if the backend reports it, else the process's peak host RSS).
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
from jdarts import genotypes, models, optim, schedules, train, train_config  # noqa: E402

PRESETS = {"paper": dict(C=36, layers=20, batch=96), "small": dict(C=16, layers=8, batch=32)}


def peak_memory_mb() -> float:
  """Peak device memory if the backend reports it, else peak host RSS (MB)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args):
  """(compiled step, state, batch, parameter count) for the requested network."""
  cfg = train_config.train_defaults()
  genotype = genotypes.load_genotype(args.genotype)
  net = models.build_model(
      dict(name="cifar", init_channels=args.C, layers=args.layers,
           auxiliary=bool(args.auxiliary), depthwise=args.depthwise, dtype=args.dtype),
      10, genotype=genotype)
  steps_per_epoch = 50000 // args.batch
  lr = schedules.make_schedule(cfg.optim, cfg.epochs, steps_per_epoch)
  tx = optim.weight_optimizer(cfg.optim, lr)
  # Constant drop-path probability: the step's cost does not depend on its value.
  step = train.make_train_step(net, tx, lr, lambda s: jnp.float32(args.drop_path),
                               auxiliary_weight=cfg.loss.auxiliary_weight)
  state = train.init_state(net, jax.random.PRNGKey(0), (32, 32, 3), tx)
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(args.batch, 32, 32, 3), jnp.float32),
           "label": jnp.asarray(rng.randint(0, 10, args.batch), jnp.int32)}
  fn = jax.jit(step, donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  return compiled, compile_s, state, batch, models.count_params(state.params)["params"]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                  help="paper: C=36, 20 cells, batch 96; small: C=16, 8 cells, batch 32")
  ap.add_argument("--C", type=int, default=0, help="initial channels (0: the preset's)")
  ap.add_argument("--layers", type=int, default=0, help="cells (0: the preset's)")
  ap.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's)")
  ap.add_argument("--genotype", default="DARTS_V2")
  ap.add_argument("--auxiliary", type=int, default=1)
  ap.add_argument("--drop_path", type=float, default=0.2)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--depthwise", default="auto")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  for k, v in PRESETS[args.preset].items():
    if not getattr(args, k):
      setattr(args, k, v)

  compiled, compile_s, state, batch, n_params = build(args)
  state, metrics = compiled(state, batch)  # warm-up (first-run allocations)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  if not np.isfinite(float(metrics["loss"])):
    raise SystemExit(f"non-finite loss {float(metrics['loss'])}")
  med = statistics.median(times)
  row = {"bench": "train_step", "C": args.C, "layers": args.layers, "batch": args.batch,
         "genotype": args.genotype, "auxiliary": bool(args.auxiliary),
         "drop_path": args.drop_path, "dtype": args.dtype, "depthwise": args.depthwise,
         "params": n_params, "median_ms": 1e3 * med, "min_ms": 1e3 * min(times),
         "images_per_s": args.batch / med, "compile_s": compile_s,
         "peak_memory_mb": peak_memory_mb(), "repeats": args.repeats,
         "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
         "cpu_threads": os.cpu_count(), "jax": jax.__version__}
  print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "a") as fh:
      fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
