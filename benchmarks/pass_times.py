"""Where XLA's compile time goes, per HLO pass, from XLA's own log.

    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1 \
        python benchmarks/search_step.py ... 2> compile.log
    python benchmarks/pass_times.py compile.log [--top 15]

XLA logs every pass it runs (`HLO pass: NAME time: ... (N us)`) after
announcing each pipeline (`Running HLO pass pipeline on module M: PIPELINE`),
for every backend. This sums the microseconds per module and, for the modules
that took longest, per pass, as markdown. A partial log (a
compile killed by a timeout) is summarised as far as it got, which is how a
compile that never finishes on a short GPU lease can still be explained.
What passes do not account for (LLVM code generation, on CPU and GPU) shows
as the gap between a module's pass time and the compile's wall time.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
from typing import Dict, Iterable, List

_PIPELINE = re.compile(r"^\S+\s+\S+\s+(\d+) .*Running HLO pass pipeline on module (\S+): (.*)$")
_PASS = re.compile(r"^\S+\s+\S+\s+(\d+) .*HLO pass: (\S+) time: .*?\((\d+) us\)")


def parse(lines: Iterable[str]) -> Dict[str, Dict[str, int]]:
  """{module: {pass: microseconds}} from XLA's pass-pipeline log lines.

  Threads interleave (XLA compiles modules on several threads), so each line is
  attributed to the module its thread announced last. A nested pipeline is
  itself logged as a pass of its parent, around its own passes: such entries
  (a pass named as a pipeline of the log) are dropped, so nothing counts twice.
  """
  lines = list(lines)
  pipelines = {m.group(3).strip() for m in map(_PIPELINE.match, lines) if m}
  module_of: Dict[str, str] = {}  # thread id -> module
  out: Dict[str, Dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
  for line in lines:
    m = _PIPELINE.match(line)
    if m:
      module_of[m.group(1)] = m.group(2)
      continue
    m = _PASS.match(line)
    if m and m.group(2) not in pipelines:
      out[module_of.get(m.group(1), "?")][m.group(2)] += int(m.group(3))
  return out


def report(times: Dict[str, Dict[str, int]], top: int = 15, modules: int = 2) -> str:
  """Markdown: seconds per module, then the top passes of the largest `modules`."""
  total = lambda d: sum(d.values()) / 1e6
  ranked = sorted(times, key=lambda m: -total(times[m]))
  out = [f"XLA pass time: {sum(total(d) for d in times.values()):.1f} s over "
         f"{len(times)} modules", "", "| module | pass s |", "| --- | --- |"]
  out += [f"| {m} | {total(times[m]):.2f} |" for m in ranked[:8]]
  for m in ranked[:modules]:
    out += ["", f"Module {m}: top passes", "", "| pass | s | share |", "| --- | --- | --- |"]
    whole = max(total(times[m]), 1e-9)
    for name, us in sorted(times[m].items(), key=lambda kv: -kv[1])[:top]:
      out.append(f"| {name} | {us / 1e6:.2f} | {us / 1e6 / whole:.0%} |")
  return "\n".join(out)


def main(argv: List[str] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("log", help="stderr of a process run with TF_CPP_MIN_LOG_LEVEL=0 "
                  "TF_CPP_VMODULE=hlo_pass_pipeline=1 ('-': stdin)")
  ap.add_argument("--top", type=int, default=15, help="passes listed per module")
  ap.add_argument("--modules", type=int, default=2, help="modules broken down")
  args = ap.parse_args(argv)
  fh = sys.stdin if args.log == "-" else open(args.log, errors="replace")
  with fh:
    times = parse(fh)
  if not times:
    print(f"pass_times: error: no XLA pass lines in {args.log}; run the program with "
          "TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1.", file=sys.stderr)
    return 1
  print(report(times, args.top, args.modules))
  return 0


if __name__ == "__main__":
  sys.exit(main())
