"""Times the CIFAR evaluation network's training step: images/s, median ms, compile s, memory.

    python benchmarks/train_step.py                     # the paper's network (A.2.1)
    python benchmarks/train_step.py --preset=small      # C=16, 8 cells, batch 32 (CPU)
    python benchmarks/train_step.py --C=36 --layers=20 --batch=96 --dtype=bfloat16
    python benchmarks/train_step.py --backend=shard_map      # through jdarts.parallel

The step is `jdarts.train.make_train_step` exactly as `jdarts train` runs it
on one device: forward with drop-path and the auxiliary head, cross-entropy
(+0.4 x auxiliary), gradients, clipping, weight decay, momentum SGD, the
BatchNorm running-average update; jitted with the state donated, on random
32x32x3 inputs. The default is the paper's evaluation network (DARTS_V2,
C=36, 20 cells, batch 96; 3.3M parameters). `--backend=pmap|shard_map` runs
the per-device step (gradients averaged over the device axis) through
`jdarts.parallel.ParallelStep` on `--devices` devices, as `jdarts train` does
on several; its compile time is then the first call's time less one step's.

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
from jdarts import genotypes, models, optim, parallel, schedules, train, train_config  # noqa: E402

PRESETS = {"paper": dict(C=36, layers=20, batch=96), "small": dict(C=16, layers=8, batch=32)}


def peak_memory_mb() -> float:
  """Peak device memory if the backend reports it, else peak host RSS (MB)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args):
  """(compiled step, compile s, state, batch, parameter count) for the requested network.

  With a device backend the "compiled step" is a `parallel.ParallelStep` (compiled
  on its first call, so compile s is None here) and the state is placed for it.
  """
  cfg = train_config.train_defaults()
  genotype = genotypes.load_genotype(args.genotype)
  axis = None if args.backend == "jit" else parallel.AXIS
  net = models.build_model(
      dict(name="cifar", init_channels=args.C, layers=args.layers,
           auxiliary=bool(args.auxiliary), depthwise=args.depthwise, dtype=args.dtype),
      10, genotype=genotype, bn_axis_name=axis)
  steps_per_epoch = 50000 // args.batch
  lr = schedules.make_schedule(cfg.optim, cfg.epochs, steps_per_epoch)
  tx = optim.weight_optimizer(cfg.optim, lr)
  # Constant drop-path probability: the step's cost does not depend on its value.
  step = train.make_train_step(net, tx, lr, lambda s: jnp.float32(args.drop_path),
                               auxiliary_weight=cfg.loss.auxiliary_weight, axis_name=axis)
  state = train.init_state(models.without_axis_name(net), jax.random.PRNGKey(0),
                           (32, 32, 3), tx)
  rng = np.random.RandomState(0)
  batch = {"image": np.asarray(rng.randn(args.batch, 32, 32, 3), np.float32),
           "label": np.asarray(rng.randint(0, 10, args.batch), np.int32)}
  n_params = models.count_params(state.params)["params"]
  if axis is not None:
    wrapped = parallel.ParallelStep(step, backend=args.backend, num_batches=1,
                                    devices=jax.local_devices()[:args.devices or None])
    return wrapped, None, wrapped.put_state(state), batch, n_params
  batch = jax.tree_util.tree_map(jnp.asarray, batch)
  fn = parallel.jit(step, donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  return compiled, compile_s, state, batch, n_params


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
  ap.add_argument("--backend", default="jit", choices=("jit", "pmap", "shard_map"),
                  help="plain jit, or the per-device step through jdarts.parallel")
  ap.add_argument("--devices", type=int, default=1, help="with pmap/shard_map (0: all)")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  for k, v in PRESETS[args.preset].items():
    if not getattr(args, k):
      setattr(args, k, v)

  # Progress on stderr as it goes: a run killed by a timeout (a short GPU
  # lease) still says whether it got past compiling.
  say = lambda msg: print(f"[train_step] {args.backend} {args.dtype}: {msg}", file=sys.stderr,
                          flush=True)
  say(f"building and compiling C={args.C}, {args.layers} cells, batch {args.batch} on "
      f"{jax.devices()[0].device_kind}")
  compiled, compile_s, state, batch, n_params = build(args)
  t0 = time.perf_counter()
  state, metrics = compiled(state, batch)  # warm-up (first-run allocations)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - t0
  say(f"first step done ({'compiled in %.1f s, ' % compile_s if compile_s else ''}"
      f"first call {first_s:.1f} s); timing {args.repeats} steps")
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  if args.backend != "jit":  # one value per metric, whatever the wrapper
    metrics = compiled.get_metrics(metrics)
  if not np.isfinite(float(metrics["loss"])):
    raise SystemExit(f"non-finite loss {float(metrics['loss'])}")
  med = statistics.median(times)
  if compile_s is None:
    compile_s = max(first_s - med, 0.0)
  row = {"bench": "train_step", "backend_wrapper": args.backend, "devices": args.devices, "C": args.C, "layers": args.layers, "batch": args.batch,
         "genotype": args.genotype, "auxiliary": bool(args.auxiliary),
         "drop_path": args.drop_path, "dtype": args.dtype, "depthwise": args.depthwise,
         "params": n_params, "median_ms": 1e3 * med, "min_ms": 1e3 * min(times),
         "images_per_s": args.batch / med, "compile_s": compile_s,
         "first_call_s": first_s,
         "peak_memory_mb": peak_memory_mb(), "repeats": args.repeats,
         "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
         "cpu_threads": os.cpu_count(), "jax": jax.__version__}
  print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "a") as fh:
      fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
