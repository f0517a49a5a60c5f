"""Several independent searches as one: the seed axis of a `num_seeds = K` search.

A K-seed search (`jdarts.seeds_loop`) runs K searches that differ only in
their seed: search k is the single search with `seed = cfg.seed + k` (its
weights, alphas, optimiser states, RNG and data order). Their states are
stacked into one `SearchState` whose leaves carry a leading seed axis (K, ...),
except the carry, whose leaves keep the global batch axis first (B, K, ...),
so `jdarts.parallel.ParallelStep` splits carries and batches over devices
along axis 0 exactly as for one search. Batches are stacked the same way,
(B, K, ...); with a fixed data order (`data.seed >= 0`) every search reads
the same batch, passed once, (B, ...), and broadcast by `jax.vmap`.

`vmap_step` turns the per-device search step into the K-seed per-device step
(collectives over the device axis work inside `vmap`), so seeds x devices is
`ParallelStep(vmap_step(step))`. Metrics come back with shape (K,).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Sequence

import jax
import numpy as np

from jdarts import event_writer
from jdarts import runs
from jdarts import search as search_lib
from jdarts import staged

SEED_DIR = "seed_{}"
SUMMARY_JSON = "seeds.json"


def seed_config(cfg, k: int):
  """A resolved copy of `cfg` for search k alone: `seed = cfg.seed + k`, `num_seeds = 1`."""
  c = cfg.copy_and_resolve_references()
  with c.unlocked():
    c.seed = cfg.seed + k
    c.num_seeds = 1
  return c


def seed_dir(workdir: str, k: int) -> str:
  """`workdir/seed_<k>`: the outputs of search k (k counts from 0, seed = cfg.seed + k)."""
  return os.path.join(workdir, SEED_DIR.format(k))


def _has_carry(state) -> bool:
  return getattr(state, "carry", None) is not None


def stack_states(states: Sequence[search_lib.SearchState]) -> search_lib.SearchState:
  """K host states -> one with leaves (K, ...) and carry leaves (B, K, ...)."""
  stack = lambda axis: (lambda *xs: np.stack([np.asarray(x) for x in xs], axis=axis))
  out = jax.tree_util.tree_map(stack(0), *[s.replace(carry=None) for s in states])
  if _has_carry(states[0]):
    out = out.replace(carry=jax.tree_util.tree_map(stack(1), *[s.carry for s in states]))
  return out


def unstack_state(state: search_lib.SearchState, k: int) -> search_lib.SearchState:
  """Search k's state out of a stacked one (`stack_states`)."""
  out = jax.tree_util.tree_map(lambda x: x[k], state.replace(carry=None))
  if _has_carry(state):
    out = out.replace(carry=jax.tree_util.tree_map(lambda x: x[:, k], state.carry))
  return out


def stack_batches(batches: Sequence[Any]) -> Any:
  """K batches with leaves (B, ...) -> one with leaves (B, K, ...) (batch axis first)."""
  return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs], axis=1),
                                *batches)


def state_axes(state: search_lib.SearchState) -> search_lib.SearchState:
  """The `vmap` axes of a stacked state: 0 for every field, 1 for the carry."""
  zero = jax.tree_util.tree_map(lambda _: 0, state.replace(carry=None))
  if _has_carry(state):
    zero = zero.replace(carry=jax.tree_util.tree_map(lambda _: 1, state.carry))
  return zero


def vmap_step(step: Callable, state_template: search_lib.SearchState, *,
              shared_batches: bool, num_batches: int = 2) -> Callable:
  """The per-device step of K searches: `step` vmapped over the seed axis.

  Args:
    step: the per-device `(state, *batches) -> (state, metrics)` of one search.
    state_template: a stacked state (`stack_states`), for the axes of its fields.
    shared_batches: True: batches are (B, ...), the same for every search;
      False: (B, K, ...), one per search.
    num_batches: batch arguments after the state.

  Returns:
    `(stacked state, *batches) -> (stacked state, metrics of shape (K,))`; a
    `jdarts.staged.StagedStep` stays one, each stage vmapped.
  """
  axes = state_axes(state_template)
  batch_axis = None if shared_batches else 1
  if isinstance(step, staged.StagedStep):
    # Scratch rows keep the batch axis first, as the carry does.
    scratch = {staged.REP: 0, staged.ROWS: 1}
    return step.map(lambda name, f: jax.vmap(
        f, in_axes=(axes, batch_axis, batch_axis, scratch),
        out_axes=(axes, 0) if name == step.final else scratch))
  return jax.vmap(step, in_axes=(axes,) + (batch_axis,) * num_batches, out_axes=(axes, 0))


class SeedWriters(event_writer.MultiWriter):
  """The `Run` writer of a K-seed search: row values of shape (K,) go one to each seed.

  Scalars (e.g. the throughput, shared by all searches) go to every seed;
  texts, resumes and closes go to every seed's writer (`MultiWriter`).
  """

  def write(self, step: int, kind: str, values: Dict[str, Any]) -> None:
    for k, w in enumerate(self.writers):
      w.write(step, kind, {n: (np.asarray(v)[k] if np.ndim(v) else v)
                           for n, v in values.items()})


def skip_count(stats: Dict[str, float]) -> Any:
  """The skip-connection count of a genotype's stats (normal cell first), else None."""
  for key in ("normal_num_skip_connect", "num_skip_connect"):
    if key in stats:
      return stats[key]
  return next((v for k, v in stats.items() if "skip" in k), None)


def write_summary(workdir: str, rows: List[Dict[str, Any]], metric_keys: Sequence[str]) -> str:
  """Writes `seeds.json` (the rows) and `seeds.md` (a table) to `workdir`; returns the .md path.

  Args:
    rows: one dict per search: 'seed', 'dir', 'genotype' (formatted),
      'skip_connect' (None: the space counts none) and the held-out metrics.
    metric_keys: the held-out metric columns, in order.
  """
  runs.write_json(os.path.join(workdir, SUMMARY_JSON), {"seeds": rows})
  cell = lambda v: ("n/a" if v is None else f"{100 * v:.2f}%" if isinstance(v, float)
                    and 0.0 <= v <= 1.0 else f"{v:.4g}" if isinstance(v, float) else str(v))
  cols = ["seed", "dir"] + list(metric_keys) + ["skip_connect", "genotype"]
  lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
  for row in rows:
    values = [row.get(c) for c in cols]
    values[-1] = f"`{values[-1]}`"
    lines.append("| " + " | ".join(cell(v) if i < len(cols) - 1 else v
                                   for i, v in enumerate(values)) + " |")
  path = os.path.join(workdir, "seeds.md")
  with open(path, "w") as f:
    f.write("# Searches of this workdir, one per seed\n\n" + "\n".join(lines) + "\n")
  return path


def seed_dirs_of(spec: Any) -> List[str]:
  """The seed directories of a several-seed search workdir `spec` (its seeds.json), else []."""
  if not isinstance(spec, str) or not os.path.isfile(os.path.join(spec, SUMMARY_JSON)):
    return []
  import json
  with open(os.path.join(spec, SUMMARY_JSON)) as f:
    rows = json.load(f)["seeds"]
  return [os.path.join(spec, row["dir"]) for row in rows]


def train_each_seed(loop, cfg, workdir: str) -> List[Any]:
  """`jdarts train` of every seed's genotype of a several-seed search workdir.

  `cfg.genotype` names the search workdir; seed k's genotype
  (`cfg.genotype/seed_<k>`) is trained with `loop.run` into `workdir/seed_<k>`,
  in turn, each a complete training run (resumable on its own).

  Returns:
    The summaries of `loop.run`, one per seed.
  """
  out = []
  for path in seed_dirs_of(cfg.genotype):
    c = cfg.copy_and_resolve_references()
    with c.unlocked():
      c.genotype = path
    out.append(loop.run(c, os.path.join(workdir, os.path.basename(path))))
  return out
