"""The run report: `DIR/report.md`, written at the end of `jdarts search`.

What a researcher reads first about a finished search, in one Markdown file:
the config in brief, wall and compile time, throughput, the held-out metrics
of the supernet, the final genotype (with its `genotype_stats`, e.g. the
parameter-free operations per cell), the parameter count of the network that
would train it (`jdarts summary`'s count, when the space names an evaluation
network in `eval_model`), and the pictures of `jdarts plot` (jdarts.viz),
linked from DIR/plots/.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np

from jdarts import arch_stats
from jdarts import summary as summary_lib
from jdarts import train_config
from jdarts import viz

log = logging.getLogger("jdarts")

# Config keys the summary table shows (dotted), when present.
_CONFIG_KEYS = ("space", "data.name", "data.train_portion", "batch_size", "epochs",
                "max_steps", "seed", "arch.method", "arch.learning_rate", "optim.learning_rate",
                "optim.weight_decay", "model.mixing", "model.init_channels", "model.layers",
                "model.steps", "model.primitives", "parallel.num_devices")


def _get(tree: Dict[str, Any], dotted: str):
  for k in dotted.split("."):
    if not isinstance(tree, dict) or k not in tree:
      return None
    tree = tree[k]
  return tree


def eval_params(cfg, space, genotype) -> Optional[Dict[str, Any]]:
  """Parameters and multiply-adds of `genotype`'s evaluation network, or None.

  The network is `space.eval_model` (a `model` block naming a
  `jdarts.models.MODELS` network) over the training defaults (`jdarts.train_config`: e.g. DARTS's C=36, 20 cells)
  without the auxiliary head, on the search's dataset. None when the space
  names no evaluation network.
  """
  model = getattr(space, "eval_model", None)
  if not model:
    return None
  c = train_config.train_defaults()
  for k, v in model.items():
    c.model[k] = v
  c.model.auxiliary = False  # not counted in `params`; its pooling needs >= 8x8 maps
  c.data.name = cfg.data.name
  for key in ("image_shape", "num_classes"):
    if key in cfg.data:
      c.data[key] = cfg.data[key]
  out = summary_lib.summarize_eval(c, genotype)
  out["sizes"] = ", ".join(f"{k}={c.model[k]}" for k in ("init_channels", "layers",
                                                        "cells_per_stage") if k in c.model)
  return out


def _throughput(workdir: str) -> Dict[str, float]:
  """Mean of each '*_per_sec' over the 'train' rows after the first (compilation)."""
  rows = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  train = [r for r in rows if r.get("kind") == "train"][1:]
  keys = sorted({k for r in train for k in r if k.endswith("_per_sec")})
  return {k: float(np.mean([r[k] for r in train if k in r])) for k in keys}


def write_report(workdir: str, cfg, space, genotype, summary: Dict[str, Any]) -> str:
  """Draws the plots and writes workdir/report.md; returns its path."""
  config = json.loads(cfg.to_json_best_effort())
  lines: List[str] = [f"# Search report: {config.get('space', '?')} on "
                      f"{_get(config, 'data.name') or '?'}", ""]
  lines += ["## Config", "", "| key | value |", "|---|---|"]
  lines += [f"| {k} | {_get(config, k)} |" for k in _CONFIG_KEYS if _get(config, k) is not None]
  lines += ["", "(the whole config: [config.json](config.json))", ""]

  lines += ["## Time and throughput", ""]
  lines.append(f"- wall time: {summary.get('seconds', float('nan')):.1f} s for "
               f"{summary.get('steps')} steps")
  compile_s = summary.get("compile_seconds")
  if compile_s is not None:
    lines.append(f"- first step, compilation included: {compile_s:.1f} s")
  for k, v in _throughput(workdir).items():
    lines.append(f"- throughput: {v:.1f} {k.replace('_per_sec', '')}/s (mean over log "
                 "intervals after the first)")
  lines.append("")

  held_out = {k: v for k, v in summary.items()
              if isinstance(v, float) and k.split("_")[0] in ("search", "test")}
  if held_out:
    lines += ["## Supernet on held-out data", ""]
    lines += [f"- {k}: {v:.4f}" for k, v in sorted(held_out.items())]
    lines.append("")

  lines += ["## Final genotype", "", "```", space.format_genotype(genotype), "```", ""]
  stats = arch_stats.genotype_stats(space, genotype)
  if stats:
    lines += [f"- {k}: {v:g}" for k, v in stats.items()] + [""]
  lines.append("(as JSON: [genotype.json](genotype.json))")
  lines.append("")

  try:
    size = eval_params(cfg, space, genotype)
  except Exception as e:  # a count failing must not lose a finished search's report
    log.warning("report: the evaluation network's size is not available (%s: %s)",
                type(e).__name__, e)
    size = {"error": f"{type(e).__name__}: {e}"}
  if size is not None:
    lines += ["## Evaluation network", ""]
    if "error" in size:
      lines.append(f"- not available: {size['error']}")
    else:
      lines.append(f"- `{size['model']}` network, {size['sizes']} (training defaults; "
                   "`jdarts summary` counts the same way)")
      lines.append(f"- parameters: {size['params']:,} ({size['params'] / 1e6:.2f}M, "
                   "auxiliary head excluded)")
      lines.append(f"- multiply-adds for one image: {size['mult_adds']:,}")
    lines.append("")

  written = viz.plot_workdir(workdir)
  rel = [os.path.relpath(w, workdir) for w in written]
  pngs = [w for w in rel if w.endswith(".png")]
  lines += ["## Plots", "", "(`jdarts plot --workdir=DIR` redraws them; "
            "`tensorboard --logdir DIR` shows the logged rows)", ""]
  for w in pngs:
    lines += [f"![{os.path.basename(w)[:-4]}]({w})", ""]
  dots = [w for w in rel if w.endswith(".dot")]
  if dots:
    lines.append("Graphviz sources: " + ", ".join(f"[{os.path.basename(w)}]({w})" for w in dots))
    lines.append("")
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
