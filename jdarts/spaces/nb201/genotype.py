"""NAS-Bench-201 architectures: the cell string, its parse and round trip, derivation, loading.

An NB201 cell has 4 nodes: node 0 is the cell input, nodes 1..3 each sum one
operation applied to every earlier node (6 edges). Its standard string
(Dong & Yang 2020, NAS-Bench-201; AutoDL-Projects `genotypes.Structure.tostr`)
lists the edges node by node::

    |op~0|+|op~0|op~1|+|op~0|op~1|op~2|

The Python form (`Arch`) is the same structure as nested tuples, hashable so
that it can be a Flax module attribute::

    ((('nor_conv_3x3', 0),), (('nor_conv_3x3', 0), ('nor_conv_3x3', 1)),
     (('skip_connect', 0), ('nor_conv_3x3', 1), ('nor_conv_3x3', 2)))

The alphas are one (6, 5) array; row e is edge `EDGES[e]` = (target, source)
in the reference's order (its sorted '1<-0', '2<-0', '2<-1', '3<-0', '3<-1',
'3<-2', which is also the string's order), column k is `PRIMITIVES[k]`.
"""
from __future__ import annotations

import json
import os
from typing import Sequence, Tuple

import numpy as np

from jdarts.spaces.darts_cnn.derive import mixing_weights

# NB201's own operation namespace (AutoDL-Projects `cell_operations.NAS_BENCH_201`),
# in the reference's alpha column order.
PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3")
NUM_NODES = 4
EDGES = tuple((i, j) for i in range(1, NUM_NODES) for j in range(i))  # (target, source)

Arch = Tuple[Tuple[Tuple[str, int], ...], ...]
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def arch_to_str(arch: Arch) -> str:
  """The standard string of an architecture (module docstring)."""
  return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in arch)


def parse_arch(text: str, primitives: Sequence[str] = PRIMITIVES) -> Arch:
  """Parses (and checks) a standard NB201 string into an `Arch`.

  Raises:
    ValueError: one line naming the string, what is wrong and an example.
  """
  def bad(problem: str) -> ValueError:
    return ValueError(f"NAS-Bench-201 string {text!r}: {problem}; expected e.g. {_EXAMPLE!r}.")

  if not isinstance(text, str):
    raise bad(f"is a {type(text).__name__}, not a string")
  nodes = text.strip().split("+")
  if len(nodes) != NUM_NODES - 1:
    raise bad(f"has {len(nodes)} '+'-separated nodes, not {NUM_NODES - 1}")
  arch = []
  for i, node in enumerate(nodes, start=1):
    if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
      raise bad(f"node {i} ({node!r}) must start and end with '|'")
    entries = node[1:-1].split("|")
    if len(entries) != i:
      raise bad(f"node {i} has {len(entries)} inputs, not {i}")
    parsed = []
    for j, entry in enumerate(entries):
      op, sep, src = entry.rpartition("~")
      if not sep or src != str(j):
        raise bad(f"node {i} entry {entry!r} must be 'op~{j}' (inputs in order 0..{i - 1})")
      if op not in primitives:
        raise bad(f"unknown operation {op!r} (known: {', '.join(primitives)})")
      parsed.append((op, j))
    arch.append(tuple(parsed))
  return tuple(arch)


def derive(alphas: np.ndarray, primitives: Sequence[str] = PRIMITIVES,
           mixing: str = "softmax") -> Arch:
  """Argmax per edge of the mixing's weights, 'none' allowed (the reference's `genotype()`).

  Args:
    alphas: (6, len(primitives)) logits, rows in `EDGES` order.
    primitives: the column order.
    mixing: the mixing the search used (`jdarts.mixing.MIXINGS`); edges are
      ranked by the weights the supernet gave the operations (ties: earlier
      primitive).

  Raises:
    ValueError: a shape mismatch or non-finite alphas.
  """
  a = np.asarray(alphas).astype(np.float64)
  if a.shape != (len(EDGES), len(primitives)):
    raise ValueError(f"NB201 alphas have shape {a.shape}; the cell needs "
                     f"{(len(EDGES), len(primitives))} (edges, operations).")
  if not np.all(np.isfinite(a)):
    raise ValueError("NB201 alphas contain non-finite values; the search diverged.")
  best = np.argmax(mixing_weights(a, mixing), axis=-1)
  nodes = [[] for _ in range(NUM_NODES - 1)]
  for e, (i, j) in enumerate(EDGES):
    nodes[i - 1].append((primitives[int(best[e])], j))
  return tuple(tuple(n) for n in nodes)


def count_ops(arch: Arch) -> dict:
  """{'skip_connect': n, 'parameter_free': m, <op>: count} over the 6 edges."""
  ops = [op for node in arch for op, _ in node]
  out = {p: ops.count(p) for p in PRIMITIVES}
  out["parameter_free"] = sum(op in PARAMETER_FREE for op in ops)
  return out


def load_arch(spec) -> Arch:
  """An `Arch` from a string, a JSON file {'arch': string} or a search workdir holding one.

  Raises:
    ValueError: one line naming what was given and what would work.
  """
  spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
  if isinstance(spec, str) and spec.strip().startswith("|"):
    return parse_arch(spec)
  path = spec
  if isinstance(path, str) and os.path.isdir(path):
    path = os.path.join(path, "genotype.json")
  if not (isinstance(path, str) and os.path.isfile(path)):
    raise ValueError(f"{spec!r} is neither an NB201 string (e.g. {_EXAMPLE!r}) nor a "
                     "genotype.json file or search workdir holding one.")
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from None
  if not isinstance(d, dict) or not isinstance(d.get("arch"), str):
    raise ValueError(f"{path}: has no 'arch' string; an NB201 search writes "
                     "{\"arch\": \"|op~0|+...\"}.")
  return parse_arch(d["arch"])


__all__ = ["PRIMITIVES", "PARAMETER_FREE", "NUM_NODES", "EDGES", "Arch", "arch_to_str",
           "parse_arch", "derive", "count_ops", "load_arch"]
