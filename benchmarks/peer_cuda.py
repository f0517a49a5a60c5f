#!/usr/bin/env python
"""Runs the reference's own search steps on a GPU: `bench_torch_darts.py` made CUDA-correct.

    python benchmarks/peer_cuda.py --bench PEERS_BENCH/bench_torch_darts.py PEER_TREE \
        --configs paper --kinds weight,arch_first,arch_second --runs 2

`../shared/peers/bench_torch_darts.py` times the reference (quark0/darts) on CPU. On a
CUDA machine three things would make its figures wrong, and this adapter changes
exactly those, in the child process that times each kind (the harness itself and the
reference's files are not edited; every change is listed in each row's `patches`):

* the harness builds the reference's `Network` and its random batches on the CPU
  while the reference creates its alphas with `.cuda()`: the model and the batches
  are moved to the GPU after building (as `cnn/train_search.py` does with
  `model.cuda()` and `input.cuda()`);
* CUDA kernels run asynchronously, so a host clock around a step measures the
  launches: `torch.cuda.synchronize()` before and after every timed step;
* peak host RSS says nothing about a GPU run: `peak_rss_mb` becomes the CUDA
  allocator's `max_memory_allocated` (MB), the figure comparable to jdarts's
  `device_peak_mb` (XLA's `peak_bytes_in_use`).

`torch.backends.cudnn.benchmark = True`, as `cnn/train_search.py` sets it. Without
CUDA nothing is changed (the rows then equal the harness's own). Needs only torch:
run it with the torch interpreter, never jdarts's environment.
"""
import argparse
import importlib.util
import os
import sys
import time


def load_bench(path):
  """The harness as a module (its `main` is not run on import)."""
  spec = importlib.util.spec_from_file_location("bench_torch_darts", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def patch_for_cuda(bench, bench_path):
  """Makes `bench`'s children run through this adapter and, with CUDA, time the GPU."""
  orig_child_cmd = bench.child_cmd

  def child_cmd(args, config, kind, mode):
    cmd = orig_child_cmd(args, config, kind, mode)
    # [python, harness, ...] -> [python, adapter, --bench, harness, ...]
    return [cmd[0], os.path.abspath(__file__), "--bench", bench_path] + cmd[2:]
  bench.child_cmd = child_cmd

  import torch
  if not torch.cuda.is_available():
    return
  orig_build = bench.build
  torch.backends.cudnn.benchmark = True

  def build(args, cfg):
    torch_, peer, patches, build_s = orig_build(args, cfg)
    model = getattr(peer, "model", None)
    if model is None or not hasattr(peer, "b"):
      raise SystemExit("peer_cuda: error: %s keeps no `model`/`b`; this adapter knows "
                       "quark0/darts only" % type(peer).__name__)
    model.cuda()  # in place: the optimisers keep their parameter references
    peer.b = tuple(t.cuda() for t in peer.b)
    torch.cuda.reset_peak_memory_stats()
    return torch_, peer, patches + [
        "peer_cuda: model and batches moved to %s; torch.cuda.synchronize() around each "
        "timed step; cudnn.benchmark=True (as cnn/train_search.py); peak_rss_mb is "
        "torch.cuda.max_memory_allocated" % torch.cuda.get_device_name(0)], build_s
  bench.build = build

  def timed(fn):
    torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0
  bench.timed = timed
  bench.peak_rss_mb = lambda: torch.cuda.max_memory_allocated() / 2**20


def main():
  ap = argparse.ArgumentParser(add_help=False)
  ap.add_argument("--bench", required=True, help="path of bench_torch_darts.py")
  args, rest = ap.parse_known_args()
  bench_path = os.path.abspath(args.bench)
  if not os.path.isfile(bench_path):
    raise SystemExit("peer_cuda: error: --bench %s does not exist; pass the harness "
                     "(../shared/peers/bench_torch_darts.py)" % args.bench)
  bench = load_bench(bench_path)
  patch_for_cuda(bench, bench_path)
  sys.argv = [bench_path] + rest
  bench.main()


if __name__ == "__main__":
  main()
