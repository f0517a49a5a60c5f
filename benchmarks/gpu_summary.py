"""Tabulates `benchmarks/gpu_suite.sh`'s JSON lines, with the projected run times.

    python benchmarks/gpu_summary.py SUITE_DIR/search.jsonl SUITE_DIR/train.jsonl

Projections (compile time left out; add the `compile_s` column once per run):

* a search of `--epochs` (50) epochs on CIFAR-10's half split (`--train_images`
  25,000, the other half is the validation stream) takes
  epochs * (train_images // batch) search steps, each an architecture step of
  the kind plus a weight step: the `first_order` search = arch_first_order +
  weight, `exact_hvp` = exact_hvp + weight, `finite_difference` likewise;
* the evaluation training of `--train_epochs` (600) epochs on 50,000 images
  takes train_epochs * ceil(50000 / batch) training steps.

With `--ref SUITE_DIR/ref.jsonl` (the reference's rows, `benchmarks/peer_cuda.py`)
it adds the side-by-side table of `benchmarks/side_by_side.py`: reference and
jdarts per step kind, per-edge and batched-edges rows, ratios, device memory;
with `--forms SUITE_DIR/forms.jsonl`, a table of the weight step per forced
depthwise form.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from typing import Dict, List

SEARCH_KINDS = (("first_order", "arch_first_order"), ("exact_hvp", "exact_hvp"),
                ("finite_difference", "finite_difference"))


def read_jsonl(path: str) -> List[dict]:
  """The JSON objects of a JSON-lines file (blank and non-JSON lines skipped)."""
  rows = []
  with open(path) as fh:
    for line in fh:
      line = line.strip()
      if line.startswith("{"):
        rows.append(json.loads(line))
  return rows


def search_hours(arch_ms: float, weight_ms: float, batch: int, epochs: int = 50,
                 train_images: int = 25000) -> float:
  """Hours of a bilevel search: epochs * (train_images // batch) * (arch + weight step)."""
  return epochs * (train_images // batch) * (arch_ms + weight_ms) / 3.6e6


def train_hours(step_ms: float, batch: int, epochs: int = 600, images: int = 50000) -> float:
  """Hours of an evaluation training: epochs * ceil(images / batch) steps."""
  return epochs * math.ceil(images / batch) * step_ms / 3.6e6


def _f(x, nd=1):
  return "-" if x is None else f"{x:.{nd}f}"


def _peak_mb(row: dict):
  """The row's device peak (GPU/TPU), else its running process's peak RSS (CPU), MB."""
  return row.get("device_peak_mb") or row.get("run_peak_rss_mb")


def search_table(rows: List[dict], epochs: int, train_images: int) -> str:
  """Markdown: per architecture-step kind, ms/step, images/s, compile, memory, projection."""
  by = {r["kind"]: r for r in rows if "kind" in r and "error" not in r}
  weight = by.get("weight")
  out = ["| search step | ms/step (min / median) | images/s | compile s | peak MB (device, "
         f"else host run) | {epochs}-epoch search, h (arch + weight step) |",
         "| --- | --- | --- | --- | --- | --- |"]
  for label, kind in (("weight", "weight"),) + SEARCH_KINDS:
    r = by.get(kind)
    if r is None:
      out.append(f"| {label} | missing | | | | |")
      continue
    proj = "-"
    if kind != "weight" and weight is not None:
      proj = _f(search_hours(r["ms_per_step"], weight["ms_per_step"], r["batch_size"],
                             epochs, train_images), 2)
    out.append(f"| {label} | {_f(r['ms_min'])} / {_f(r['ms_per_step'])} | "
               f"{_f(r['images_per_s'])} | {_f(r['compile_s'])} | {_f(_peak_mb(r), 0)} | {proj} |")
  return "\n".join(out)


def forms_table(rows: List[dict]) -> str:
  """Markdown: one step kind per forced `model.depthwise` form (gpu_suite --forms)."""
  out = ["| step, depthwise form | ms/step (min / median) | lower s | compile s | "
         "peak MB (device, else host run) |", "| --- | --- | --- | --- | --- |"]
  for r in rows:
    if "kind" not in r or "error" in r:
      continue
    out.append(f"| {r['kind']}, {r.get('depthwise', '?')} | {_f(r['ms_min'])} / "
               f"{_f(r['ms_per_step'])} | {_f(r.get('lower_s'))} | {_f(r.get('compile_s'))} | "
               f"{_f(_peak_mb(r), 0)} |")
  return "\n".join(out)


def train_table(rows: List[dict], epochs: int) -> str:
  """Markdown: per (wrapper, dtype), ms/step, images/s, compile, memory, projection."""
  out = ["| training step | ms/step (min / median) | images/s | compile s | peak MB | "
         f"{epochs}-epoch training, h |", "| --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    if "median_ms" not in r:
      continue
    out.append(f"| {r.get('backend_wrapper', 'jit')}, {r['dtype']}, C={r['C']}, "
               f"{r['layers']} cells, batch {r['batch']} | {_f(r['min_ms'])} / "
               f"{_f(r['median_ms'])} | {_f(r['images_per_s'])} | {_f(r['compile_s'])} | "
               f"{_f(r['peak_memory_mb'], 0)} | "
               f"{_f(train_hours(r['median_ms'], r['batch'], epochs), 2)} |")
  return "\n".join(out)


def side_by_side_table(ref_rows: List[dict], search_rows: List[dict], meta: dict) -> str:
  """Markdown: the reference's rows (`peer_cuda.py`) against ours, per variant.

  Ours are keyed by kind and variant ('batch_edges' where the row was measured
  with `model.batch_edges`, else 'default'); `meta` as `side_by_side.table`
  takes it, less what the rows themselves say (setting sizes, torch, jax, device).
  """
  import side_by_side  # benchmarks/, beside this file
  ref = {r["kind"]: r for r in ref_rows if "kind" in r}
  ours = {(r["kind"], "batch_edges" if r.get("batch_edges") else "default"): r
          for r in search_rows if "kind" in r}
  first = next((r for r in search_rows if "init_channels" in r), {})
  variants = [v for v in ("default", "batch_edges") if any(k[1] == v for k in ours)]
  full = dict(C=first.get("init_channels", "?"), layers=first.get("layers", "?"),
              batch=first.get("batch_size", "?"),
              device=None if first.get("backend", "cpu") == "cpu" else first.get("device"),
              torch=next((r.get("torch") for r in ref_rows if r.get("torch")), "?"),
              jax=first.get("jax", "?"), cpu="?", threads="?")
  full.update(meta)
  return side_by_side.table(ref, ours, full, variants or ["default"])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("search_jsonl")
  ap.add_argument("train_jsonl", nargs="?", default="")
  ap.add_argument("--epochs", type=int, default=50, help="search epochs (paper: 50)")
  ap.add_argument("--train_images", type=int, default=25000,
                  help="images of the search's training half (CIFAR-10: 25,000)")
  ap.add_argument("--train_epochs", type=int, default=600, help="evaluation epochs (paper: 600)")
  ap.add_argument("--ref", default="", help="the reference's rows (benchmarks/peer_cuda.py): "
                  "adds the side-by-side table")
  ap.add_argument("--forms", default="", help="rows of the weight step per depthwise form "
                  "(gpu_suite --forms): adds their table")
  ap.add_argument("--setting", default="paper", help="label of the search setting")
  ap.add_argument("--commit", default="?", help="jdarts commit measured")
  ap.add_argument("--peer_commit", default="f276dd3", help="the reference's commit")
  ap.add_argument("--loads", default="?,?,?",
                  help="load averages before the reference, after it, after ours")
  args = ap.parse_args(argv)
  search_rows = read_jsonl(args.search_jsonl)
  dev = next((r for r in search_rows if "device" in r), {})
  print(f"device: {dev.get('device', '?')} ({dev.get('backend', '?')}), jax "
        f"{dev.get('jax', '?')}\n")
  print(search_table([r for r in search_rows if not r.get("batch_edges")], args.epochs,
                     args.train_images))
  if args.forms:
    print()
    print(forms_table(read_jsonl(args.forms)))
  if args.ref:
    loads = (args.loads.split(",") + ["?"] * 3)[:3]
    meta = dict(setting=args.setting, commit=args.commit, peer_commit=args.peer_commit,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                load0=loads[0], load1=loads[1], load2=loads[2])
    print()
    print(side_by_side_table(read_jsonl(args.ref), search_rows, meta))
  if args.train_jsonl:
    print()
    print(train_table(read_jsonl(args.train_jsonl), args.train_epochs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
