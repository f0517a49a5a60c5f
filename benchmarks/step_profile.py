"""Where a compiled search step spends its run time: per-kernel profiler times by source module.

    python benchmarks/step_profile.py --C=16 --layers=8 --batch=64 --kind=weight
    python benchmarks/step_profile.py --kind=exact_hvp --batch_edges --top=30

Compiles one step kind of `benchmarks/search_step.py` (the same function it
times), runs it once to warm up, then `--steps` more times under
`jax.profiler.trace`, and reads the trace back (`jax.profiler.ProfileData`).
Every kernel the runtime executed (XLA:CPU: one event per thunk, tagged with
its HLO instruction) is attributed to

* its kind: the instruction's name less its number (`ynn_fusion`: a
  convolution or dot run by YNNPACK; `transpose_copy_fusion`; `wrapped_scatter`; ...),
* the innermost Flax module of its `op_name` metadata ('BatchNorm',
  'DepthwiseConv', 'MixedOp'; 'top' outside any module, e.g. the optimiser),
  or, for an instruction without metadata (layout copies XLA adds), that of
  its first operand that has some, marked '<-'; '?' if none,
* the pass: 'bwd' inside a `transpose(...)`, else 'fwd'.

Prints one JSON object (`wall_ms` per step, `kernel_ms`: the kernels' summed
time per step, which exceeds the wall time by the threads' overlap, and the
rows) and a markdown table of the `--top` rows and of the modules. The
compile-time counterpart is `benchmarks/compile_profile.py`.

Kernel times are busy times on the runtime's threads: with two threads a kernel
off the critical path can be removed without shortening the step, so a row's
share bounds what removing it could save; it is not a prediction.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, HERE)

import compile_profile  # noqa: E402


def instruction_sources(text: str) -> dict:
  """{instruction name: (module, 'fwd'|'bwd')} for every instruction of an optimised HLO module.

  Uses `compile_profile.source_of` on the instruction's `op_name`; an
  instruction without one gets its first named operand's source (module
  prefixed '<-'), so the layout copies and transposes XLA inserts land near the
  code that caused them.
  """
  named, operands = {}, {}
  for line in text.splitlines():
    m = compile_profile.INSTRUCTION.match(line)
    if not m:
      continue
    name, args = m.group(1), m.group(3)
    op_name = re.search(r'op_name="([^"]*)"', line)
    if op_name:
      named[name] = compile_profile.source_of(op_name.group(1))
    else:
      operands[name] = re.findall(r"%([\w.\-]+)", args.split("), ")[0])
  out = dict(named)
  for name, ops in operands.items():
    src = next((named[o] for o in ops if o in named), None)
    out[name] = ("<-" + src[0], src[1]) if src else ("?", "fwd")
  return out


def kernel_times(xplane_path: str, module: str = "") -> dict:
  """{HLO instruction: [total ns, count]} of the kernel events of a trace.

  Args:
    xplane_path: a `*.xplane.pb` written by `jax.profiler.trace`.
    module: keep only events of HLO modules whose name contains this ('' keeps all).
  """
  import jax
  data = jax.profiler.ProfileData.from_file(xplane_path)
  out: dict = collections.defaultdict(lambda: [0.0, 0])
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        stats = dict(ev.stats)
        if "hlo_op" not in stats or module not in str(stats.get("hlo_module", "")):
          continue
        slot = out[stats["hlo_op"]]
        slot[0] += ev.duration_ns
        slot[1] += 1
  return dict(out)


def aggregate(times: dict, sources: dict, steps: int = 1) -> list:
  """Rows {kind, module, pass, ms, count} per step, most time first.

  Args:
    times: `kernel_times` output.
    sources: `instruction_sources` output.
    steps: traced steps (times and counts are divided by it).
  """
  acc: dict = collections.defaultdict(lambda: [0.0, 0])
  for op, (ns, n) in times.items():
    module, phase = sources.get(op, ("?", "fwd"))
    slot = acc[(re.sub(r"\.\d+$", "", op), module, phase)]
    slot[0] += ns
    slot[1] += n
  rows = [{"kind": k, "module": m, "pass": p, "ms": round(ns / 1e6 / steps, 2),
           "count": round(n / steps)} for (k, m, p), (ns, n) in acc.items()]
  return sorted(rows, key=lambda r: -r["ms"])


def by_module(rows: list) -> list:
  """[(module with '<-' folded in, ms)] summed over kinds and passes, most first."""
  acc: dict = collections.Counter()
  for r in rows:
    module = r["module"].removeprefix("<-")
    # Copies of single parameters (the optimiser's inputs) are named after them.
    acc["top:parameter copies" if module.startswith("top:state.") else module] += r["ms"]
  return [(m, round(v, 1)) for m, v in acc.most_common()]


def table(rows: list, total_ms: float, top: int) -> str:
  lines = ["| kernel kind | module | pass | ms / step | share | kernels / step |",
           "| --- | --- | --- | --- | --- | --- |"]
  for r in rows[:top]:
    lines.append(f"| {r['kind']} | {r['module']} | {r['pass']} | {r['ms']:.1f} | "
                 f"{100 * r['ms'] / total_ms:.1f}% | {r['count']} |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  import search_step
  search_step.add_supernet_args(ap)
  ap.add_argument("--batch_edges", action="store_true")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--kind", default="weight",
                  help="a step kind of search_step.py (weight, arch_first_order, exact_hvp, ...)")
  ap.add_argument("--steps", type=int, default=1, help="traced steps")
  ap.add_argument("--top", type=int, default=25)
  ap.add_argument("--trace_dir", default="", help="keep the trace here (default: a temp dir)")
  args = ap.parse_args(argv)

  import jax
  from jdarts import parallel
  space, cfg, w_opt, a_opt, sched, state, tb, vb = search_step.build(
      args.C, args.layers, args.batch, args.depthwise, args.primitives, args.batch_edges,
      alpha_scale=1e-3, dtype=args.dtype)
  fns = search_step.step_fns(space, cfg, w_opt, a_opt, sched)
  if args.kind not in fns:
    raise SystemExit(f"step_profile: error: --kind={args.kind!r}; choose from "
                     f"{', '.join(sorted(fns))}.")
  t0 = time.perf_counter()
  compiled = parallel.jit(fns[args.kind]).lower(state, tb, vb).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(state, tb, vb))
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="step_profile_")
  with jax.profiler.trace(trace_dir):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      out = compiled(state, tb, vb)
    jax.block_until_ready(out)
    wall_ms = 1e3 * (time.perf_counter() - t0) / args.steps
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise SystemExit(f"step_profile: error: no *.xplane.pb under {trace_dir}: the "
                     "profiler wrote no trace.")
  rows = aggregate(kernel_times(paths[-1]), instruction_sources(compiled.as_text()),
                   args.steps)
  kernel_ms = sum(r["ms"] for r in rows)
  print(json.dumps({"kind": args.kind, "C": args.C, "layers": args.layers,
                    "batch": args.batch, "batch_edges": args.batch_edges,
                    "depthwise": args.depthwise, "compile_s": round(compile_s, 1),
                    "wall_ms": round(wall_ms, 1), "kernel_ms": round(kernel_ms, 1),
                    "backend": jax.default_backend(), "jax": jax.__version__,
                    "loadavg_1m": round(os.getloadavg()[0], 2), "rows": rows}), flush=True)
  print(f"\n{args.kind}: wall {wall_ms:.0f} ms/step, kernels {kernel_ms:.0f} ms/step "
        "(summed over threads)\n")
  print(table(rows, kernel_ms, args.top))
  print("\n| module | ms / step | share |\n| --- | --- | --- |")
  for m, v in by_module(rows)[:args.top]:
    print(f"| {m} | {v:.1f} | {100 * v / kernel_ms:.1f}% |")


if __name__ == "__main__":
  main()
