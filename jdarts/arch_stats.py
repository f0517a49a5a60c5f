"""Statistics of the architecture during a search, for any space: alpha entropy, genotype counts.

The search loop logs them as 'arch' rows (metrics.jsonl and TensorBoard):

* `alpha_entropy(alphas)`: for every alpha array, the entropy (nats) of the
  softmax over its last axis (the operations of an edge), averaged over the
  other axes (the edges). Uniform mixing over K operations gives log K; a
  decided edge gives 0. Computed from the alphas alone, so every space has it
  (spaces that mix with sigmoid or Max-W still show how peaked the alphas are).
* `space.genotype_stats(genotype)` (jdarts.spaces.base): counts a space knows,
  e.g. skip-connections and parameter-free operations in the DARTS cells.
"""
from __future__ import annotations

from typing import Any, Dict

import jax
import numpy as np


def _leaves_with_names(alphas) -> Dict[str, np.ndarray]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(alphas)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[name or "alphas"] = np.asarray(leaf, np.float64)
  return out


def alpha_entropy(alphas) -> Dict[str, float]:
  """{'alpha_entropy/<name>': mean over edges of the softmax entropy} per alpha array.

  Args:
    alphas: a pytree of arrays (..., K); the last axis holds one edge's
      operation logits. Scalars and empty arrays are skipped.
  """
  out = {}
  for name, a in _leaves_with_names(alphas).items():
    if a.ndim == 0 or a.size == 0:
      continue
    z = a - a.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    ent = -(np.exp(logp) * logp).sum(axis=-1)
    out[f"alpha_entropy/{name}"] = float(ent.mean())
  return out


def genotype_stats(space: Any, genotype: Any) -> Dict[str, float]:
  """`space.genotype_stats(genotype)`, or {} for a space without the method."""
  fn = getattr(space, "genotype_stats", None)
  return dict(fn(genotype)) if fn is not None else {}
