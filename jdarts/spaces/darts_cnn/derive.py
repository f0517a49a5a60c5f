"""Deriving a discrete DARTS cell pair (a `Genotype`) from the search's alphas (paper sec. 2.4).

Edges and operations are ranked by the weights the supernet gave them, i.e.
by the space's mixing (`jdarts.mixing`): softmax for DARTS, sigmoid for
Single-DARTS, Max-W for sharpDARTS. The built-in mixings are recomputed here
in float64 numpy (their twins below), so that bfloat16 or float32 alphas of
an early search, still near-uniform, do not turn into spurious ties, and so
that softmax reproduces the reference's `genotype()` exactly. A user-registered
mixing is computed by its own JAX function at JAX's default precision.

Note on Max-W (w' = 1 - max(w) + w): every edge whose strongest operation is
not 'none' gets strength 1 (exactly, when that weight is at least 1/2), so
such edges tie and the lower predecessor index wins.
"""
from __future__ import annotations

from typing import List, Sequence

import jax.numpy as jnp
import numpy as np

from jdarts import genotypes
from jdarts import mixing as mixing_lib

Entry = genotypes.Entry


def _np_softmax(x: np.ndarray) -> np.ndarray:
  """Row-wise softmax of a (E, O) float64 array."""
  z = np.exp(x - x.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _np_max_w(x: np.ndarray) -> np.ndarray:
  w = _np_softmax(x)
  return 1.0 - w.max(axis=-1, keepdims=True) + w


# float64 twins of the JAX mixings, keyed by the registered function itself:
# a name re-registered since import falls back to its JAX function.
_NUMPY_TWINS = {mixing_lib.softmax: _np_softmax, mixing_lib.sigmoid: _np_sigmoid,
                mixing_lib.max_w: _np_max_w}


def mixing_weights(alphas: np.ndarray, mixing: str) -> np.ndarray:
  """The (E, O) float64 edge weights the mixing named `mixing` gives (E, O) alphas."""
  fn = mixing_lib.MIXINGS.get(mixing)  # KeyError naming the known mixings
  twin = _NUMPY_TWINS.get(fn)
  if twin is not None:
    return twin(alphas)
  return np.asarray(fn(jnp.asarray(alphas)), np.float64)


def _parse_cell(alphas, name: str, primitives: Sequence[str], steps: int, k: int,
                mixing: str) -> List[Entry]:
  """Keeps the k strongest edges into each node and their strongest op."""
  expected = (sum(2 + i for i in range(steps)), len(primitives))
  a = np.asarray(alphas)
  if a.shape != expected:
    raise ValueError(f"{name} has shape {tuple(a.shape)}; the DARTS CNN cell with "
                     f"{steps} steps needs {expected}.")
  # Upcast: bfloat16 alphas mixed in their own precision would turn the
  # near-uniform strengths of an early search into spurious ties.
  a = a.astype(np.float64)
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} contains non-finite values; the search diverged.")
  strength = mixing_weights(a, mixing)
  # 'none' only rescales a node, so it is never a candidate (paper sec. 2.4);
  # its alpha still enters the mixing, exactly as in the reference.
  candidates = np.array([p != 'none' for p in primitives])
  masked = np.where(candidates, strength, -np.inf)
  best_op = np.argmax(masked, axis=-1)  # first maximum: earlier primitive wins
  best_strength = masked.max(axis=-1)

  gene = []
  start = 0
  for i in range(steps):
    end = start + i + 2
    # Stable sort of the negated strength = strongest first, ties to the lower
    # predecessor index; the reference's `sorted(..., key=-max)` does the same.
    order = np.argsort(-best_strength[start:end], kind='stable')[:k]
    for j in order:
      gene.append((primitives[best_op[start + j]], int(j)))
    start = end
  return gene


def derive(alphas_normal, alphas_reduce, primitives: Sequence[str] = genotypes.PRIMITIVES,
           *, steps: int = 4, multiplier: int = 4, k: int = 2,
           mixing: str = "softmax") -> genotypes.Genotype:
  """Discretises the architecture weights of a DARTS CNN search (paper sec. 2.4).

  For every intermediate node, each incoming edge is scored by its strongest
  non-'none' operation, with strength mix(alphas of the edge) (the mixing
  runs over all operations, 'none' included). The k best edges are kept,
  strongest first (ties: lower predecessor index), each with its strongest
  non-'none' operation (ties: earlier in `primitives`). With softmax this
  reproduces `Network.genotype()` of quark0/darts `cnn/model_search.py`.

  Args:
    alphas_normal: (E, O) architecture logits of the normal cell, numpy or JAX;
      E = 2 + 3 + ... + (steps + 1) edges (14 for 4 steps), laid out node by
      node (node 2's edges from nodes 0, 1; node 3's from 0, 1, 2; ...);
      O = len(primitives).
    alphas_reduce: (E, O) logits of the reduction cell.
    primitives: operation names, in the column order of the alphas.
    steps: number of intermediate nodes.
    multiplier: how many of the last intermediate nodes form the cell output.
    k: edges kept per node; the evaluation network and the JSON format assume
      the DARTS value 2 (the first node has only 2 predecessors, so k <= 2).
    mixing: name of the mixing the search used (`jdarts.mixing.MIXINGS`).

  Returns:
    A `Genotype` with `k * steps` entries per cell and concat
    `[2 + steps - multiplier, ..., steps + 1]`.

  Raises:
    ValueError: on a shape mismatch, non-finite alphas, 'none' as the only
      primitive, or steps / multiplier / k out of range.
    KeyError: an unknown mixing.
  """
  primitives = tuple(primitives)
  genotypes.check_cell_size(steps, multiplier)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 2:
    raise ValueError(f"k must be 1 or 2 (node 2 has only 2 predecessors); got {k!r}.")
  if all(p == 'none' for p in primitives):
    raise ValueError(f"primitives {primitives!r} have no operation besides 'none'.")
  mixing_lib.MIXINGS.get(mixing)
  normal = _parse_cell(alphas_normal, 'alphas_normal', primitives, steps, k, mixing)
  reduce = _parse_cell(alphas_reduce, 'alphas_reduce', primitives, steps, k, mixing)
  concat = list(range(2 + steps - multiplier, steps + 2))
  return genotypes.Genotype(normal, concat, reduce, list(concat))


__all__ = ["derive", "mixing_weights"]
