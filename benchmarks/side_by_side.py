"""The reference DARTS search steps and ours, back to back in one run, as a markdown table.

    python benchmarks/side_by_side.py --ptv=PTV --peer=PEERS/darts \
        --config=small --runs=2 --threads=2 --out=side_by_side.jsonl

First the reference (quark0/darts in PyTorch, through
`../shared/peers/bench_torch_darts.py`, each kind in fresh processes, `--runs`
runs), then `benchmarks/search_step.py --isolate` at the same C, cells and
batch (each kind in a fresh process: weight, arch_first_order, exact_hvp,
finite_difference, and the whole search steps search_finite_difference and
search_exact_hvp, set against the reference's architecture step plus its
weight step), then one table: min and median ms per step of both, the
ratio reference / ours, our compile time (wall and process CPU seconds), the
peak RSS of both (ours: compiling and running apart), the load average before
and after each half, and the CPU model. `--tiny` (C=2, 3 cells, batch 2) checks
the plumbing in a few minutes; the figures that count are the `small` (C=8, 5
cells, batch 16) and `paper` (C=16, 8 cells, batch 64) settings on a quiet
machine. Needs a venv with the CPU build of torch (`--ptv`) and an extracted
reference work tree (`--peer`); see ../shared/peers/README.md.

Semantics of the figures: the reference's median is the median over runs of
per-run medians and its min the smallest per-run median (bench_torch_darts.py);
ours are the median and min over `--repeats` steps of one process per kind,
after one warm-up call. Both use all `--threads` cores (JAX takes the machine's).
`--variants=default,batch_edges,fused,dense` times ours per edge, with
`model.batch_edges`, and with `model.depthwise` forced to 'fused' or to 'dense'
(one row per kind and variant).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_BENCH = os.path.join(ROOT, os.pardir, "shared", "peers", "bench_torch_darts.py")
SETTINGS = {"tiny": (2, 3, 2),  # 3 cells: the reference needs a normal cell
            "small": (8, 5, 16), "paper": (16, 8, 64)}
# (our kind, the reference's kind, row label)
# Our supernet variants: search_step.py flags.
VARIANT_FLAGS = {"default": [], "batch_edges": ["--batch_edges"], "fused": ["--depthwise=fused"],
                 "dense": ["--depthwise=dense"]}
ROWS = (("weight", "weight", "weight"),
        ("arch_first_order", "arch_first", "first-order architecture"),
        ("exact_hvp", "arch_second", "second-order, exact HVP (ref: finite differences)"),
        ("finite_difference", "arch_second", "second-order, finite differences"),
        ("search_finite_difference", "arch_second+weight",
         "whole search step, finite differences (ref: arch_second + weight)"),
        ("search_exact_hvp", "arch_second+weight",
         "whole search step, exact HVP (ref: arch_second + weight)"))


def ref_row(ref, ref_kind: str) -> dict:
  """The reference's row of `ref_kind`; for 'a+b' the sum of its kinds' step times
  (min and median each summed) and the larger of their peaks."""
  parts = [ref.get(k, {}) for k in ref_kind.split("+")]
  if len(parts) == 1:
    return parts[0]
  out = {}
  for key, combine in (("ms_min", sum), ("ms_per_step", sum), ("peak_rss_mb", max)):
    values = [p.get(key) for p in parts]
    out[key] = None if None in values else combine(values)
  return out


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (or platform's), with the core count."""
  name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          name = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{name}, {os.cpu_count()} logical CPUs"


def load() -> str:
  return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def json_lines(text: str):
  """The JSON objects of `text`, one per line; other lines are skipped."""
  rows = []
  for line in text.splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return rows


def run(cmd, env=None):
  """Runs `cmd`, echoing stderr live; returns (return code, stdout)."""
  print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
  p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
  return p.returncode, p.stdout


def table(ref, ours, meta, variants=("default",), rows=ROWS) -> str:
  """The markdown report of one side-by-side run.

  `ref`: {reference kind: row}; `ours`: {(our kind, variant): row}; one line
  per variant and kind of `rows` (a subset of `ROWS`), '-' where a figure is missing.
  With `meta['device']` (a GPU run) the memory columns are device peaks: the
  reference's CUDA allocator (`peer_cuda.py`) and XLA's `device_peak_mb`.
  """
  f = lambda x: "-" if x is None else (f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}")
  device = meta.get("device")  # a GPU/TPU run: device memory instead of host RSS
  where = f"device: {device}" if device else f"CPU: {meta['cpu']}; {meta['threads']} threads"
  out = [f"Side by side, {meta['setting']} (C={meta['C']}, {meta['layers']} cells, batch "
         f"{meta['batch']}), {meta['date']}; {where}; "
         f"reference quark0/darts {meta['peer_commit']} in torch {meta['torch']}, "
         f"jdarts {meta['commit']} in jax {meta['jax']}.",
         f"Load average (1/5/15 min): before the reference {meta['load0']}, after it "
         f"{meta['load1']}, after ours {meta['load2']}.", "",
         "| step | reference min / median ms | jdarts min / median ms | ref / ours (min) "
         "| ref / ours (median) | jdarts compile s (wall / CPU) | reference peak MB "
         + ("(CUDA allocator) | jdarts peak MB (device) |" if device
            else "| jdarts peak MB (compile / run) |"),
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for variant in variants:
    for kind, ref_kind, label in rows:
      r, o = ref_row(ref, ref_kind), ours.get((kind, variant), {})
      rmin, rmed = r.get("ms_min"), r.get("ms_per_step")
      omin, omed = o.get("ms_min"), o.get("ms_per_step")
      ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}x"
      label = label if variant == "default" else f"{label}, {variant}"
      out.append(
          f"| {label} | {f(rmin)} / {f(rmed)} | {f(omin)} / {f(omed)} | {ratio(rmin, omin)} "
          f"| {ratio(rmed, omed)} | {f(o.get('compile_s'))} / {f(o.get('compile_cpu_s'))} "
          f"| {f(r.get('peak_rss_mb'))} | "
          + (f"{f(o.get('device_peak_mb'))} |" if device else
             f"{f(o.get('compile_peak_rss_mb'))} / {f(o.get('run_peak_rss_mb'))} |"))
  errors = [f"{k}: {v['error']}" for d in (ref, ours) for k, v in d.items() if "error" in v]
  if errors:
    out += ["", "Failed: " + "; ".join(errors)]
  return "\n".join(out)


def git_commit(path: str) -> str:
  try:
    return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--ptv", required=True, help="venv with torch (CPU build) and numpy")
  ap.add_argument("--peer", required=True, help="extracted quark0/darts work tree")
  ap.add_argument("--bench", default=DEFAULT_BENCH, help="bench_torch_darts.py")
  ap.add_argument("--config", default="small", choices=sorted(SETTINGS))
  ap.add_argument("--tiny", action="store_true", help="same as --config=tiny")
  ap.add_argument("--runs", type=int, default=2, help="reference runs per kind")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=5, help="our timed steps per kind")
  ap.add_argument("--peer_commit", default="f276dd3",
                  help="the reference's commit (an archive extract has no .git)")
  ap.add_argument("--out", default="", help="append every JSON row and the table here")
  ap.add_argument("--variants", default="default",
                  help="ours, comma-separated: 'default' (the per-edge supernet), "
                       "'batch_edges' (model.batch_edges), 'fused' / 'dense' "
                       "(model.depthwise forced); each runs every kind")
  ap.add_argument("--kinds", default=",".join(k for k, _, _ in ROWS),
                  help="our kinds, comma-separated (the reference runs the kinds they map "
                       "to); e.g. weight,arch_first_order at the paper setting, where the "
                       "reference's second order alone takes ~45 min")
  args = ap.parse_args(argv)
  kinds = [k for k in args.kinds.split(",") if k]
  unknown = sorted(set(kinds) - {k for k, _, _ in ROWS})
  if unknown:
    raise SystemExit(f"side_by_side: error: --kinds: unknown {', '.join(unknown)}; choose "
                     f"from {', '.join(k for k, _, _ in ROWS)}.")
  rows = [r for r in ROWS if r[0] in kinds]
  variants = [v for v in args.variants.split(",") if v]
  for v in variants:
    if v not in VARIANT_FLAGS:
      raise SystemExit(f"side_by_side: error: --variants: unknown {v!r}; choose from "
                       f"{', '.join(VARIANT_FLAGS)}.")
  setting = "tiny" if args.tiny else args.config
  C, layers, batch = SETTINGS[setting]
  torch_py = os.path.join(args.ptv, "bin", "python")
  for path, what in ((torch_py, "--ptv has no bin/python; make it with `python3.11 -m venv "
                      "PTV && PTV/bin/pip install torch==2.13.0 numpy`"),
                     (os.path.join(args.peer, "cnn", "model_search.py"),
                      "--peer is not a quark0/darts work tree (no cnn/model_search.py); "
                      "extract one with `git -C MIRROR archive HEAD | tar -x -C PEER`"),
                     (args.bench, "--bench: no bench_torch_darts.py there")):
    if not os.path.exists(path):
      raise SystemExit(f"side_by_side: error: {what}.")

  meta = dict(setting=setting, C=C, layers=layers, batch=batch, threads=args.threads,
              cpu=cpu_model(), date=datetime.datetime.now(datetime.timezone.utc)
              .strftime("%Y-%m-%d %H:%M UTC"), peer_commit=args.peer_commit,
              commit=git_commit(ROOT), load0=load())
  ref_cmd = [torch_py, args.bench, args.peer, "--configs", "small", "--runs", str(args.runs),
             "--threads", str(args.threads), "--peer-commit", args.peer_commit,
             "--init-channels", str(C), "--layers", str(layers), "--batch-size", str(batch),
             "--kinds", ",".join(dict.fromkeys(k for _, rk, _ in rows for k in rk.split("+")))]
  _, ref_out = run(ref_cmd)
  ref_rows = json_lines(ref_out)
  meta["load1"] = load()
  our_rows = []
  for variant in variants:
    ours_cmd = [sys.executable, os.path.join(HERE, "search_step.py"), "--isolate",
                f"--C={C}", f"--layers={layers}", f"--batch={batch}",
                f"--repeats={args.repeats}",
                "--steps=" + ",".join(kind for kind, _, _ in rows)] + VARIANT_FLAGS[variant]
    _, ours_out = run(ours_cmd)
    our_rows += [dict(r, variant=variant) for r in json_lines(ours_out)]
  meta["load2"] = load()
  meta["torch"] = next((r.get("torch") for r in ref_rows if r.get("torch")), "?")
  meta["jax"] = next((r.get("jax") for r in our_rows if r.get("jax")), "?")
  ref = {r["kind"]: r for r in ref_rows if "kind" in r}
  ours = {(r["kind"], r["variant"]): r for r in our_rows if "kind" in r}
  report = table(ref, ours, meta, variants, rows)
  print(report, flush=True)
  if args.out:
    with open(args.out, "a") as fh:
      for r in ref_rows + our_rows:
        fh.write(json.dumps(dict(r, side_by_side=meta["date"])) + "\n")
      fh.write("\n" + report + "\n")
  missing = [(k, v) for k, rk, _ in rows for v in variants
             if (k, v) not in ours or rk not in ref
             or "error" in ours[k, v] or "error" in ref[rk]]
  return 1 if missing else 0


if __name__ == "__main__":
  sys.exit(main())
