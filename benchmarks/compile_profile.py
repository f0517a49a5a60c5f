"""Where the search steps' compile time goes: HLO op counts and compile CPU s per variant.

    python benchmarks/compile_profile.py --C=8 --layers=5 --batch=16 \
        --kinds=weight,arch_first_order --variants=baseline,batch_edges,llvm_cheap

Every (variant, kind) is compiled in a fresh process (XLA flags differ per
variant, and nothing compiled before may be reused), with the step of
`benchmarks/search_step.py` (state donated). Per row:

* HLO size: instructions, convolutions, dots and reduce-windows of the lowered
  StableHLO module (what jdarts hands XLA) and of XLA's optimised HLO (after
  fusion: also the number of fusions);
* compile cost: lowering (tracing) s and XLA compile s, wall and process CPU
  seconds (all threads; the CPU seconds are what to compare on a shared machine);
* run ms/step (min / median of `--repeats`, after a warm-up) and peak RSS;
* `kernel_sources`: which modules the optimised program's kernels come from
  (`kernel_sources`: e.g. BatchNorm forward / backward, the optimiser);
* `max_rel_diff`: how far the step's result is from the baseline's, through
  layout-independent sums (sum and sum of squares of the new weights, alphas
  and optimiser states), so a variant that changes the numbers shows it.

Variants (`VARIANTS`): model options (`model.batch_edges`, `model.depthwise`,
`model.remat`) and XLA:CPU flags; a flag the installed jaxlib does not know
aborts XLA, so each flag is tried on a trivial program first and a variant
with an unknown flag is reported as such. Prints one JSON line per row and
a markdown table at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, HERE)

# name -> (model overrides, XLA flags[, extra environment])
VARIANTS = {
    "baseline": ({}, ""),
    "batch_edges": ({"batch_edges": True}, ""),
    "depthwise_xla": ({"depthwise": "xla"}, ""),
    "depthwise_shift": ({"depthwise": "shift"}, ""),
    "remat": ({"remat": True}, ""),
    "opt_level_0": ({}, "--xla_backend_optimization_level=0"),
    "opt_level_1": ({}, "--xla_backend_optimization_level=1"),
    "llvm_cheap": ({}, "--xla_llvm_disable_expensive_passes=true"),
    "codegen_split_1": ({}, "--xla_cpu_parallel_codegen_split_count=1"),
    "codegen_split_8": ({}, "--xla_cpu_parallel_codegen_split_count=8"),
    "no_fusion_emitters": ({}, "--xla_cpu_use_fusion_emitters=false"),
    "no_xnnpack": ({}, "--xla_cpu_use_xnnpack=false"),
    "no_remat_pass": ({}, "", {"JAX_COMPILER_ENABLE_REMAT_PASS": "false"}),
    "batch_edges+depthwise_shift": ({"batch_edges": True, "depthwise": "shift"}, ""),
    "batch_edges+depthwise_xla": ({"batch_edges": True, "depthwise": "xla"}, ""),
    "batch_edges+llvm_cheap": ({"batch_edges": True},
                               "--xla_llvm_disable_expensive_passes=true"),
    "batch_edges+opt_level_0": ({"batch_edges": True}, "--xla_backend_optimization_level=0"),
    "batch_edges+opt_level_1": ({"batch_edges": True}, "--xla_backend_optimization_level=1"),
}
OPS = ("convolution", "dot", "reduce_window", "select_and_scatter", "fusion", "while")


def hlo_counts(text: str) -> dict:
  """Counts of `OPS` in module text by a plain token search (robust to syntax)."""
  out = {"instructions": sum(1 for l in text.splitlines() if " = " in l)}
  for op in OPS:
    pat = op.replace("_", "[-_]")
    out[op] = len(re.findall(rf"(?:= |stablehlo\.|\s){pat}[\s(\"<{{]", text))
  return out


_NOT_KERNELS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}
# One HLO instruction line: its name, opcode and operands. The shape before the
# opcode may be a tuple, with spaces (a multi-output fusion).
INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$")


def source_of(op_name: str):
  """(module, 'fwd'|'bwd') of an instruction's `op_name` metadata.

  The module is the innermost Flax module of the name (e.g. 'BatchNorm' for
  '.../cell_0/BatchNorm_3/sub'), 'top:<op>' outside any module (e.g. the
  optimiser), '?' without metadata; the phase is 'bwd' inside a `transpose(...)`.
  """
  mods = re.findall(r"/([A-Z]\w*?)_\d+", op_name)
  mod = mods[-1] if mods else ("top:" + op_name.split("/")[-1] if op_name else "?")
  return mod, "bwd" if "transpose(" in op_name else "fwd"


def kernel_sources(text: str, top: int = 12) -> list:
  """[(module, 'fwd'|'bwd', count)] of the optimised module's top-level kernels.

  Each instruction of the ENTRY computation that runs as a kernel (a fusion, a
  convolution, a copy, ...) is attributed to the innermost Flax module of its
  `op_name` metadata (e.g. 'BatchNorm'; 'top:<op>' outside any module, e.g. the
  optimiser; '?' without metadata), and to the backward pass when the name is
  inside a `transpose(...)`. The `top` most frequent, most first.
  """
  start = text.find("\nENTRY")
  if start < 0:
    return []
  entry = text[start:]
  end = entry.find("\n}\n")
  counts: dict = {}
  for line in (entry if end < 0 else entry[:end]).splitlines():
    m = INSTRUCTION.match(line)
    if not m or m.group(2) in _NOT_KERNELS:
      continue
    name = re.search(r'op_name="([^"]*)"', line)
    key = source_of(name.group(1) if name else "")
    counts[key] = counts.get(key, 0) + 1
  return [(m, ph, n) for (m, ph), n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]


def fingerprint(state) -> list:
  """Layout-independent sums of the state's floating leaves (params, alphas, optimiser states)."""
  import jax
  import numpy as np
  out = []
  for tree in (state.params, state.alphas, state.w_opt_state, state.a_opt_state):
    leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)
              if np.issubdtype(np.asarray(x).dtype, np.floating)]
    out.append(float(sum(x.sum() for x in leaves)))
    out.append(float(sum(np.square(x).sum() for x in leaves)))
  return out


def child(args) -> dict:
  """Compiles and runs one (variant, kind); the row."""
  import statistics

  import jax

  import search_step
  from jdarts import parallel
  from jdarts.spaces import darts_cnn

  model, flags = VARIANTS[args.variant][:2]
  depthwise = model.get("depthwise", "auto")
  base = search_step.build(args.C, args.layers, args.batch, depthwise, args.primitives,
                           False, alpha_scale=1e-3)
  space, cfg, w_opt, a_opt, sched, state, tb, vb = base
  if model.get("batch_edges") or model.get("remat"):
    # Same weights as the baseline (converted to the batched layout if needed).
    space, cfg, w_opt, a_opt, sched, _, tb, vb = search_step.build(
        args.C, args.layers, args.batch, depthwise, args.primitives,
        bool(model.get("batch_edges")), alpha_scale=1e-3, remat=bool(model.get("remat")))
    if model.get("batch_edges"):
      params = darts_cnn.to_batched_params(state.params, base[0].network)
      state = state.replace(params=params, w_opt_state=w_opt.init(params))
  fn = search_step.step_fns(space, cfg, w_opt, a_opt, sched)[args.kind]
  jitted = parallel.jit(fn, donate_argnums=0)  # as the search loops compile it
  w0, c0 = time.perf_counter(), time.process_time()
  lowered = jitted.lower(state, tb, vb)
  w1, c1 = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  w2, c2 = time.perf_counter(), time.process_time()
  stable = hlo_counts(lowered.as_text())
  optimised = hlo_counts(compiled.as_text())
  sources = kernel_sources(compiled.as_text())
  s = compiled(jax.tree_util.tree_map(lambda x: x.copy(), state), tb, vb)
  jax.block_until_ready(s)
  fp = fingerprint(s)
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    s = compiled(s, tb, vb)
    jax.block_until_ready(s)
    times.append(time.perf_counter() - t0)
  return {"variant": args.variant, "kind": args.kind, "xla_flags": flags, "model": model,
          "env": (VARIANTS[args.variant][2:] or ({},))[0],
          "C": args.C, "layers": args.layers, "batch": args.batch,
          "lower_s": round(w1 - w0, 2), "lower_cpu_s": round(c1 - c0, 2),
          "compile_s": round(w2 - w1, 2), "compile_cpu_s": round(c2 - c1, 2),
          "stablehlo": stable, "hlo": optimised,
          "ms_min": round(1e3 * min(times), 1),
          "ms_median": round(1e3 * statistics.median(times), 1),
          "peak_rss_mb": round(search_step.peak_rss_mb()), "fingerprint": fp,
          "loadavg_1m": round(os.getloadavg()[0], 2), "kernel_sources": sources}


def flag_ok(flags: str) -> bool:
  """Whether XLA accepts `flags` (an unknown flag aborts the process)."""
  if not flags:
    return True
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
  p = subprocess.run([sys.executable, "-c", "import jax; (jax.numpy.ones(3) + 1).block_until_ready()"],
                     env=env, capture_output=True, text=True)
  return p.returncode == 0


def table(rows) -> str:
  """Markdown: one line per (kind, variant)."""
  out = ["| kind | variant | compile CPU s (wall) | lower CPU s | StableHLO instr / conv "
         "| HLO instr / conv / fusion | run ms min / median | max rel diff | load |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    if "error" in r:
      out.append(f"| {r['kind']} | {r['variant']} | {r['error']} | | | | | | |")
      continue
    st, h = r["stablehlo"], r["hlo"]
    out.append(f"| {r['kind']} | {r['variant']} | {r['compile_cpu_s']:.1f} "
               f"({r['compile_s']:.1f}) | {r['lower_cpu_s']:.1f} | {st['instructions']} / "
               f"{st['convolution']} | {h['instructions']} / {h['convolution']} / "
               f"{h['fusion']} | {r['ms_min']:.0f} / {r['ms_median']:.0f} | "
               f"{r.get('max_rel_diff', float('nan')):.1e} | {r['loadavg_1m']} |")
  return "\n".join(out)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--C", type=int, default=8)
  ap.add_argument("--layers", type=int, default=5)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--primitives", default="")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--kinds", default="weight,arch_first_order")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--out", default="")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--variant", default="baseline", help=argparse.SUPPRESS)
  ap.add_argument("--kind", default="weight", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    print("ROW " + json.dumps(child(args)), flush=True)
    return 0
  variants = [v for v in args.variants.split(",") if v]
  for v in variants:
    if v not in VARIANTS:
      raise SystemExit(f"compile_profile: error: unknown variant {v!r}; choose from "
                       f"{', '.join(VARIANTS)}.")
  rows, base = [], {}
  for kind in args.kinds.split(","):
    for v in variants:
      flags, extra_env = VARIANTS[v][1], (VARIANTS[v][2:] or ({},))[0]
      if not flag_ok(flags):
        row = {"variant": v, "kind": kind, "error": f"XLA rejects {flags}"}
      else:
        env = dict(os.environ, **extra_env,
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
        cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--variant={v}",
               f"--kind={kind}", f"--C={args.C}", f"--layers={args.layers}",
               f"--batch={args.batch}", f"--repeats={args.repeats}",
               f"--primitives={args.primitives}"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((l for l in p.stdout.splitlines() if l.startswith("ROW ")), None)
        if line is None:
          err = (p.stderr.strip().splitlines() or ["no output"])[-1]
          row = {"variant": v, "kind": kind, "error": f"exit {p.returncode}: {err[:120]}"}
        else:
          row = json.loads(line[4:])
          if v == "baseline":
            base[kind] = row["fingerprint"]
          if kind in base:
            row["max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-30)
                                      for a, b in zip(row["fingerprint"], base[kind]))
      rows.append(row)
      print(json.dumps(row), flush=True)
      if args.out:
        with open(args.out, "a") as fh:
          fh.write(json.dumps(row) + "\n")
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
