"""Best-path derivation on a HyperCuboid (sharp_darts.txt sec. 4.1): dynamic programming.

A HyperCuboid search space is a DAG whose every source-to-sink path has the
same length: a chain of stages, each choosing (input scale, output scale,
primitive); stage s's output scale is stage s + 1's input scale. With the
stage weights W: (S, K, K, P) (W[s, i, j, p]: the weight of primitive p from
scale i to scale j in stage s), a path is scales c_0 .. c_S and primitives
p_1 .. p_S, and its score is sum_s W[s, c_s, c_{s+1}, p_{s+1}]. The paper
derives the path that maximises the total weight ("we search for an optimal
path through a sequence of primitive weights which maximizes the total path
score"; the reference takes networkx's `dag_longest_path` of the weighted
graph). On this layered DAG that is Viterbi's recursion, O(S K^2 P) instead
of the K^(S+1) P^S paths:

    best_0[i] = 0;  best_{s+1}[j] = max_{i,p} best_s[i] + W[s, i, j, p].

Pure NumPy: derivation runs on host arrays.
"""
from __future__ import annotations

from typing import List, NamedTuple

import numpy as np


class Path(NamedTuple):
  """One source-to-sink path.

  Attributes:
    scales: S + 1 scale indices c_0 .. c_S (c_0: the stem's).
    primitives: S primitive indices, one per stage.
    score: the summed stage weights along the path.
  """
  scales: List[int]
  primitives: List[int]
  score: float


def path_score(weights: np.ndarray, scales, primitives) -> float:
  """The total weight of the path (scales, primitives) through weights (S, K, K, P)."""
  return float(sum(weights[s, scales[s], scales[s + 1], primitives[s]]
                   for s in range(weights.shape[0])))


def best_path(weights: np.ndarray) -> Path:
  """The path of maximal total weight (ties: the lowest scale, then primitive, index).

  Args:
    weights: (S, K, K, P) stage weights (stage, input scale, output scale,
      primitive).

  Returns:
    The best `Path`.
  """
  w = np.asarray(weights, np.float64)
  if w.ndim != 4 or w.shape[1] != w.shape[2]:
    raise ValueError(f"weights must be (stages, scales, scales, primitives), got {w.shape}.")
  S, K, _, P = w.shape
  best = np.zeros(K)
  back = np.zeros((S, K, 2), np.int64)      # (previous scale, primitive) of each best
  for s in range(S):
    cand = best[:, None, None] + w[s]        # (K in, K out, P)
    flat = cand.transpose(1, 0, 2).reshape(K, K * P)   # per output scale
    arg = np.argmax(flat, axis=1)            # first maximum: lowest (in, p)
    back[s, :, 0], back[s, :, 1] = arg // P, arg % P
    best = flat[np.arange(K), arg]
  end = int(np.argmax(best))
  scales, prims = [end], []
  for s in range(S - 1, -1, -1):
    i, p = back[s, scales[-1]]
    prims.append(int(p))
    scales.append(int(i))
  scales.reverse()
  prims.reverse()
  return Path(scales, prims, float(best[end]))


__all__ = ["Path", "path_score", "best_path"]
