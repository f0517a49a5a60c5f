"""Pictures of a search from its workdir: `jdarts plot --workdir=DIR` writes DIR/plots/.

What it reads (all written by `jdarts search`, `jdarts.search_loop`) and draws:

* `alpha_history.jsonl` -> `alpha_evolution_<name>.png`: the softmax mixing
  weights of every edge's operations against the step, one panel per edge.
* `alphas.json` -> `alphas_<name>.png`: heatmap of the final weights (edges x ops).
* `genotype.json` -> `cell_<cell>.dot` always (Graphviz), and `cell_<cell>.png`
  rendered by the `dot` program when installed, else drawn with matplotlib.
  Cells are recognised by the genotype's JSON form: DARTS CNN
  ('normal'/'reduce' lists), recurrent DARTS ('recurrent'), NAS-Bench-201 ('arch').
* `metrics.jsonl` -> `lr.png` (learning rates), `loss.png` (train/val loss),
  `arch.png` (alpha entropy and the genotype's parameter-free counts, the
  collapse signs), `collapse.png` (alpha-Hessian eigenvalues, jdarts.collapse)
  when the rows hold them.
* `hypergrad_probe.jsonl`, when present -> `hypergrad_probe.png` (each
  estimator's cosine similarity and relative error to the reference).

matplotlib (`pip install jdarts[viz]`) is imported only here, with the Agg
backend; without it only the DOT files are written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from jdarts import genotypes
from jdarts.config_lib import ConfigError

log = logging.getLogger("jdarts")

Edge = Tuple[str, str, str]  # (source node, target node, label)


# -- cell graphs ---------------------------------------------------------------


def darts_cell_graph(cell: Sequence[Sequence[Any]], concat: Sequence[int]
                     ) -> Tuple[List[str], List[Edge]]:
  """Nodes and edges of a DARTS CNN cell (paper fig. 1; two inputs per node).

  Args:
    cell: [(op, input), ...], two entries per intermediate node; input 0 is
      c_{k-2}, 1 is c_{k-1}, j >= 2 is intermediate node j - 2.
    concat: the states concatenated into the output (indices as `input`).

  Returns:
    (nodes: ['c_{k-2}', 'c_{k-1}', '0', ..., 'c_{k}'], edges (src, dst, op);
    the output's edges have the label '').
  """
  steps = len(cell) // 2
  name = lambda j: ("c_{k-2}", "c_{k-1}")[j] if j < 2 else str(j - 2)
  nodes = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)] + ["c_{k}"]
  edges = [(name(int(j)), str(i // 2), str(op)) for i, (op, j) in enumerate(cell)]
  edges += [(name(int(j)), "c_{k}", "") for j in concat]
  return nodes, edges


def rnn_cell_graph(recurrent: Sequence[Sequence[Any]], concat: Sequence[int]
                   ) -> Tuple[List[str], List[Edge]]:
  """Recurrent DARTS cell: x_t and h_{t-1} make node 0; node i+1 applies op to node j."""
  nodes = ["x_{t}", "h_{t-1}"] + [str(i) for i in range(len(recurrent) + 1)] + ["h_{t}"]
  edges = [("x_{t}", "0", ""), ("h_{t-1}", "0", "")]
  edges += [(str(int(j)), str(i + 1), str(op)) for i, (op, j) in enumerate(recurrent)]
  edges += [(str(int(j)), "h_{t}", "avg") for j in concat]
  return nodes, edges


def nb201_cell_graph(arch: str) -> Tuple[List[str], List[Edge]]:
  """NAS-Bench-201 cell '|op~0|+|op~0|op~1|+|...|': node i takes every j < i."""
  nodes, edges = ["0"], []
  for i, part in enumerate(arch.split("+"), start=1):
    nodes.append(str(i))
    for item in filter(None, part.split("|")):
      op, j = item.rsplit("~", 1)
      edges.append((j, str(i), op))
  return nodes, edges


def genotype_cells(genotype: Dict[str, Any]) -> Dict[str, Tuple[List[str], List[Edge]]]:
  """{cell name: (nodes, edges)} for a genotype's JSON form; {} for unknown forms."""
  if "normal" in genotype and "reduce" in genotype:
    return {c: darts_cell_graph(genotype[c], genotype[f"{c}_concat"])
            for c in ("normal", "reduce")}
  if "recurrent" in genotype:
    return {"recurrent": rnn_cell_graph(genotype["recurrent"], genotype["concat"])}
  if isinstance(genotype.get("arch"), str):
    return {"cell": nb201_cell_graph(genotype["arch"])}
  return {}


def to_dot(name: str, nodes: Sequence[str], edges: Sequence[Edge]) -> str:
  """Graphviz DOT text of a cell, inputs on the left and the output on the right."""
  q = lambda s: '"' + s.replace('"', r'\"') + '"'
  lines = [f"digraph {q(name)} {{", "  rankdir=LR;",
           '  node [shape=box, style="rounded,filled", fillcolor=lightblue];']
  for n in nodes:
    lines.append(f"  {q(n)};")
  for s, d, label in edges:
    lines.append(f"  {q(s)} -> {q(d)}" + (f" [label={q(label)}]" if label else "") + ";")
  lines.append("}")
  return "\n".join(lines) + "\n"


def parse_dot_edges(dot: str) -> List[Edge]:
  """The (src, dst, label) edges of DOT text written by `to_dot`."""
  out = []
  for line in dot.splitlines():
    if "->" not in line:
      continue
    parts = line.split('"')
    label = parts[5] if len(parts) > 5 else ""
    out.append((parts[1], parts[3], label))
  return out


def _pyplot():
  try:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    return plt
  except ImportError:
    return None


def _draw_cell(plt, nodes: Sequence[str], edges: Sequence[Edge], path: str, title: str):
  """A layered drawing: node depth (longest path from the inputs) sets x."""
  depth = {n: 0 for n in nodes}
  for _ in nodes:  # relax: edges point forward, so len(nodes) passes suffice
    for s, d, _ in edges:
      depth[d] = max(depth[d], depth[s] + 1)
  cols: Dict[int, List[str]] = {}
  for n in nodes:
    cols.setdefault(depth[n], []).append(n)
  pos = {n: (x, -i + (len(c) - 1) / 2) for x, c in cols.items() for i, n in enumerate(c)}
  fig, ax = plt.subplots(figsize=(2 + 1.8 * len(cols), 1.5 + 0.9 * max(map(len, cols.values()))))
  for s, d, label in edges:
    (x0, y0), (x1, y1) = pos[s], pos[d]
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="->", color="gray", shrinkA=14, shrinkB=14))
    if label:
      ax.text(x0 + 0.55 * (x1 - x0), y0 + 0.55 * (y1 - y0), label, fontsize=7,
              ha="center", va="center", bbox=dict(fc="white", ec="none", alpha=0.8))
  for n, (x, y) in pos.items():
    ax.text(x, y, n, ha="center", va="center", fontsize=10,
            bbox=dict(boxstyle="round", fc="lightblue", ec="steelblue"))
  ax.set_xlim(-0.7, max(cols) + 0.7)
  ax.set_ylim(min(y for _, y in pos.values()) - 0.7, max(y for _, y in pos.values()) + 0.7)
  ax.set_title(title)
  ax.axis("off")
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def write_cells(genotype: Dict[str, Any], out_dir: str, plt=None) -> List[str]:
  """cell_<name>.dot for every cell, plus .png (`dot` if installed, else matplotlib)."""
  written = []
  for name, (nodes, edges) in genotype_cells(genotype).items():
    dot_path = os.path.join(out_dir, f"cell_{name}.dot")
    with open(dot_path, "w") as f:
      f.write(to_dot(name, nodes, edges))
    written.append(dot_path)
    png = os.path.join(out_dir, f"cell_{name}.png")
    if shutil.which("dot"):
      subprocess.run(["dot", "-Tpng", dot_path, "-o", png], check=True, timeout=60)
      written.append(png)
    elif plt is not None:
      _draw_cell(plt, nodes, edges, png, f"{name} cell")
      written.append(png)
  return written


# -- curves and heatmaps -----------------------------------------------------------


def _read_jsonl(path: str) -> List[Dict[str, Any]]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut short by a kill
        continue
  return rows


def _softmax(a: np.ndarray) -> np.ndarray:
  z = np.exp(a - a.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _flat_alphas(tree, prefix: str = "") -> Dict[str, np.ndarray]:
  """{name: array (E, K)} of the 2-D-able alpha arrays of a nested dict."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat_alphas(v, f"{prefix}{k}_"))
    else:
      a = np.asarray(v, np.float64)
      if a.ndim >= 1 and a.size:
        out[f"{prefix}{k}"] = a.reshape(-1, a.shape[-1])
  return out


def _op_names(config: Dict[str, Any], k: int) -> List[str]:
  prims = (config.get("model") or {}).get("primitives")
  if isinstance(prims, (list, tuple)) and len(prims) == k:
    return [str(p) for p in prims]
  if k == len(genotypes.PRIMITIVES):  # the DARTS CNN default, which configs may leave implicit
    return list(genotypes.PRIMITIVES)
  return [f"op {i}" for i in range(k)]


def plot_alpha_evolution(plt, history, config, out_dir: str) -> List[str]:
  """alpha_evolution_<name>.png: every edge's mixing weights against the step."""
  if not history:
    return []
  steps = [h["step"] for h in history]
  per_row = [_flat_alphas(h["alphas"]) for h in history]
  written = []
  for name in per_row[-1]:
    w = np.stack([_softmax(r[name]) for r in per_row])  # (T, E, K)
    _, e, k = w.shape
    ops = _op_names(config, k)
    cols = min(e, 4)
    rows = math.ceil(e / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False,
                             sharex=True, sharey=True)
    for i in range(rows * cols):
      ax = axes[i // cols][i % cols]
      if i >= e:
        ax.axis("off")
        continue
      for j in range(k):
        ax.plot(steps, w[:, i, j], marker="." if len(steps) < 30 else None, label=ops[j])
      ax.set_title(f"edge {i}", fontsize=9)
    axes[0][0].legend(fontsize=6, loc="best")
    fig.supxlabel("step")
    fig.supylabel("mixing weight (softmax)")
    fig.suptitle(f"alpha evolution: {name}")
    path = os.path.join(out_dir, f"alpha_evolution_{name}.png")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
  return written


def plot_alpha_heatmaps(plt, alphas, config, out_dir: str) -> List[str]:
  """alphas_<name>.png: the final softmax weights, edges x operations."""
  written = []
  for name, a in _flat_alphas(alphas).items():
    w = _softmax(a)
    ops = _op_names(config, w.shape[1])
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * w.shape[1], 1.0 + 0.4 * w.shape[0]))
    im = ax.imshow(w, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(w.shape[0]))
    ax.set_ylabel("edge")
    for (i, j), v in np.ndenumerate(w):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
              color="white" if v < w.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(f"final alphas: {name}")
    path = os.path.join(out_dir, f"alphas_{name}.png")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
  return written


def _curves(plt, rows, keys: Sequence[str], path: str, title: str, ylabel: str,
            log_y: bool = False) -> List[str]:
  series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            for k in keys}
  series = {k: v for k, v in series.items() if v}
  if not series:
    return []
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for k, v in series.items():
    ax.plot(*zip(*v), label=k)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  if log_y:
    ax.set_yscale("log")
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)
  return [path]


def plot_metrics(plt, rows, out_dir: str) -> List[str]:
  """lr.png, loss.png, arch.png and collapse.png from metrics.jsonl rows."""
  train = [r for r in rows if r.get("kind") == "train"]
  arch = [r for r in rows if r.get("kind") == "arch"]
  lr_keys = sorted({k for r in train for k in r if k == "lr" or k.endswith("_lr")})
  out = _curves(plt, train, lr_keys, os.path.join(out_dir, "lr.png"),
                "learning-rate schedule", "learning rate")
  out += _curves(plt, train, ("train_loss", "val_loss"), os.path.join(out_dir, "loss.png"),
                 "search losses", "loss")
  arch_keys = sorted({k for r in arch for k in r if k.startswith("alpha_entropy/")
                      or "num_" in k})
  out += _curves(plt, arch, arch_keys, os.path.join(out_dir, "arch.png"),
                 "alpha entropy (nats) and genotype counts", "value")
  coll = [r for r in rows if r.get("kind") == "collapse"]
  out += _curves(plt, coll, ("top_eigenvalue", "dominant_eigenvalue", "max_eigenvalue",
                             "min_eigenvalue"), os.path.join(out_dir, "collapse.png"),
                 "alpha Hessian of the validation loss (RobustDARTS)", "eigenvalue")
  return out


def plot_hypergrad_probe(plt, probe_rows, out_dir: str) -> List[str]:
  """hypergrad_probe.png: each method's cos-sim and relative error to the reference."""
  if not probe_rows:
    return []
  methods = sorted({r["method"] for r in probe_rows})
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for m in methods:
    rs = [r for r in probe_rows if r["method"] == m]
    for ax, key in zip(axes, ("cos_sim", "rel_err")):
      pts = [(r["step"], r[key]) for r in rs if isinstance(r.get(key), (int, float))]
      if pts:
        ax.plot(*zip(*pts), marker="o", label=m)
  ref = probe_rows[0].get("reference")
  for ax, key in zip(axes, ("cosine similarity", "relative error")):
    ax.set_xlabel("step")
    ax.set_title(f"{key} to {ref}")
    if ax.lines:
      ax.legend(fontsize=7)
  path = os.path.join(out_dir, "hypergrad_probe.png")
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)
  return [path]


def _read_json(path: str) -> Optional[Any]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def plot_workdir(workdir: str) -> List[str]:
  """Writes every picture of a search workdir into workdir/plots; returns the paths.

  Raises:
    ConfigError: `workdir` holds no search results (no alphas.json,
      genotype.json or metrics.jsonl).
  """
  need = ("alphas.json", "genotype.json", "metrics.jsonl")
  if not os.path.isdir(workdir) or not any(os.path.exists(os.path.join(workdir, n))
                                           for n in need):
    raise ConfigError(f"--workdir={workdir} holds no search results (none of "
                      f"{', '.join(need)}); give the --workdir of a `jdarts search` run.")
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  p = lambda n: os.path.join(workdir, n)
  config = _read_json(p("config.json")) or {}
  plt = _pyplot()
  written = []
  genotype = _read_json(p("genotype.json"))
  if isinstance(genotype, dict):
    written += write_cells(genotype, out_dir, plt)
  if plt is None:
    log.warning("matplotlib is not installed (pip install matplotlib): wrote only the "
                "DOT files in %s", out_dir)
    return written
  written += plot_alpha_evolution(plt, _read_jsonl(p("alpha_history.jsonl")), config, out_dir)
  alphas = _read_json(p("alphas.json"))
  if isinstance(alphas, dict):
    written += plot_alpha_heatmaps(plt, alphas, config, out_dir)
  written += plot_metrics(plt, _read_jsonl(p("metrics.jsonl")), out_dir)
  written += plot_hypergrad_probe(plt, _read_jsonl(p("hypergrad_probe.jsonl")), out_dir)
  return written
