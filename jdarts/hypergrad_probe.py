"""The hypergradient probe of a search, and the `hypergrad` config block it shares.

With `config.hypergrad_probe_every = N`, `jdarts search` compares every method
of `config.hypergrad.methods` with `config.hypergrad.reference` on the state
and batches of every N-th step (`Probe`), writing
`workdir/hypergrad_probe.jsonl`. `jdarts hypergrad` (`jdarts.hypergrad_report`)
reads the same block.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdarts import hypergrad
from jdarts import hypergrad_compare as hc
from jdarts import optim
from jdarts import search as search_lib
from jdarts.config_lib import ConfigError


def packed_loss(space):
  """`(params, alphas, (batch, rng, carry)) -> loss`: the space's loss for an estimator.

  Packing the key and the carry with the batch lets one compiled estimator
  serve every step.
  """
  def loss(params, alphas, packed):
    batch, rng, carry = packed
    return space.loss(params, alphas, batch, rng, carry)[0]
  return loss


def validate(cfg) -> None:
  """Raises ConfigError naming a bad `hypergrad` setting."""
  h = cfg.get("hypergrad")
  if h is None:
    raise ConfigError("the config has no 'hypergrad' block; start it from "
                                 "config_lib.search_defaults().")
  methods = method_list(h.methods)
  if not methods:
    raise ConfigError("hypergrad.methods is empty; choose some of "
                                 f"{', '.join(hypergrad.METHODS)}.")
  for m in list(methods) + ([h.reference] if reference_method(h) else []):
    if m not in hypergrad.METHODS:
      raise ConfigError(f"hypergrad method {m!r} is unknown; choose from "
                                   f"{', '.join(hypergrad.METHODS)}.")
  if len(set(methods)) != len(methods):
    raise ConfigError(f"hypergrad.methods lists a method twice: {methods}.")
  if h.fd_reference not in ("exact_hvp", "unrolled"):
    raise ConfigError("hypergrad.fd_reference must be 'exact_hvp' or "
                                 f"'unrolled', got {h.fd_reference!r}.")
  if h.repeats < 1:
    raise ConfigError(f"hypergrad.repeats must be >= 1, got {h.repeats}.")
  if h.fd_sweep and not (0 < h.fd_eps_min <= h.fd_eps_max and h.fd_eps_num >= 2):
    raise ConfigError(
        "need 0 < hypergrad.fd_eps_min <= hypergrad.fd_eps_max and fd_eps_num >= 2, got "
        f"{h.fd_eps_min}, {h.fd_eps_max}, {h.fd_eps_num}.")


def reference_method(h) -> Optional[str]:
  """The `hypergrad.reference` method; None for '' or 'none' (no comparison)."""
  ref = h.get("reference")
  return None if not ref or str(ref).lower() == "none" else ref


def method_list(value) -> List[str]:
  """Method names from 'a,b', ('a', 'b') or ('a,b',) (what a --config override gives)."""
  items = [value] if isinstance(value, str) else list(value)
  return [m.strip() for item in items for m in str(item).split(",") if m.strip()]


def step_xi(arch, lr: float) -> float:
  """The virtual step's xi of the search step: `arch.xi`, or the weights' lr when < 0."""
  return lr if arch.xi < 0 else float(arch.xi)


def virtual_step_name(arch) -> str:
  """`arch.virtual_step` (`optim.VIRTUAL_STEPS`), 'reference' when absent."""
  return arch.get("virtual_step", "reference")


def virtual_step(cfg, schedule) -> optim.VirtualStep:
  """The search step's virtual step (`optim.virtual_step`) for a config."""
  return optim.virtual_step(virtual_step_name(cfg.arch), cfg.optim, schedule)


def jsonable(obj):
  """Numbers as JSON allows: numpy scalars -> Python, non-finite -> None / "inf"."""
  if isinstance(obj, dict):
    return {k: jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, np.integer)):
    obj = obj.item()
  if isinstance(obj, float) and not np.isfinite(obj):
    return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
  return obj


class Probe:
  """The estimator comparison recorded during a search (`config.hypergrad_probe_every`).

  Every `every` steps, before the search step runs, every method of
  `cfg.hypergrad.methods` (and `cfg.hypergrad.reference`) is computed on the
  current search state and on the very batches that step is about to use, with
  the step's own settings (xi, virtual step, fd_eps, Neumann/CG), and one JSON
  line per method is appended to `path`::

    {"step": 40, "method": "exact_hvp", "reference": "unrolled", "cos_sim": ...,
     "rel_err": ..., "grad_norm": ..., "ms": ..., "compile_s": ..., "xi": ...}

  `ms` is the wall time of that call; `compile_s` is non-zero on the first
  probe only (each estimator is compiled once, ahead of time). The probe only
  reads the state: a search with probes ends bitwise where one without ends.
  It runs on one device over the whole batch of this process, with BatchNorm
  moments over that batch (`cross_replica_bn=True` semantics).
  """

  def __init__(self, cfg, space, w_opt, schedule, path: str):
    validate(cfg)
    h = cfg.hypergrad
    self.every = int(cfg.get("hypergrad_probe_every", 0))
    self.path = path
    self.methods = method_list(h.methods)
    self.reference = reference_method(h)
    self.space, self.w_opt, self.schedule = space, w_opt, schedule
    self.arch = cfg.arch
    self.weight_decay = cfg.optim.weight_decay
    self.virtual = virtual_step(cfg, schedule)
    self._compiled: Dict[str, Any] = {}

  def due(self, step: int) -> bool:
    """Whether the step about to run from `step` is probed."""
    return self.every > 0 and step % self.every == 0

  def _xi(self, state):
    return jnp.asarray(step_xi(self.arch, float(self.schedule(state.step))))

  def __call__(self, step: int, state, train_batch, val_batch) -> List[Dict[str, Any]]:
    """Computes every method at `state`; appends and returns the rows.

    Args:
      step: the search step the state is at (rows are keyed by it).
      state: an unreplicated `SearchState`.
      train_batch, val_batch: {'image': (B, H, W, C), 'label': (B,)}, the
        batches of the step about to run.
    """
    k_val, k_train = search_lib.step_keys(state, None)
    c_train, c_val = ((None, None) if state.carry is None
                      else (state.carry["train"], state.carry["val"]))
    # Through host memory: one uncommitted copy on the default device, whatever
    # sharding the search step keeps the state in (the executables are AOT).
    to_jnp = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), t)
    xi = self._xi(state)
    w_opt = self.virtual.optimizer
    w_os = None if w_opt is None else self.virtual.state_of(state.w_opt_state)
    # The step's keys and carries travel inside the batches, so each estimator
    # compiles once for every probe.
    args = (to_jnp(state.params), to_jnp(state.alphas),
            to_jnp((train_batch, k_train, c_train)), to_jnp((val_batch, k_val, c_val)),
            to_jnp(w_os), xi)
    names = list(self.methods)
    if self.reference is not None and self.reference not in names:
      names.append(self.reference)
    grads, rows = {}, []
    for m in names:
      compile_s = 0.0
      if m not in self._compiled:
        fn = hc.estimator_fn(m, packed_loss(self.space), packed_loss(self.space), w_opt, False,
                           hypergrad.estimator_options(self.arch, self.weight_decay))
        self._compiled[m], compile_s = hc.compile_estimator(m, fn, args)
      t0 = time.perf_counter()
      grads[m] = jax.device_get(jax.block_until_ready(self._compiled[m](*args)))
      if m in self.methods:
        rows.append({"step": int(step), "method": m, "reference": self.reference,
                     "grad_norm": float(np.linalg.norm(hc.flatten(grads[m]))),
                     "ms": 1e3 * (time.perf_counter() - t0), "compile_s": compile_s,
                     "xi": float(xi)})
    for row in rows:
      if self.reference is None:
        row["cos_sim"] = row["rel_err"] = None
      else:
        row["cos_sim"] = hc.cosine_similarity(grads[row["method"]], grads[self.reference])
        row["rel_err"] = hc.relative_error(grads[row["method"]], grads[self.reference])
    with open(self.path, "a") as f:
      for row in rows:
        f.write(json.dumps(jsonable(row)) + "\n")
    return rows

  @staticmethod
  def format(step: int, rows) -> str:
    """One line: each method's cosine similarity to the reference."""
    if not rows or rows[0]["reference"] is None:
      return f"hypergrad probe at step {step}: " + ", ".join(
          f"{r['method']} |g| {r['grad_norm']:.3g}" for r in rows)
    return (f"hypergrad probe at step {step} (cos-sim vs {rows[0]['reference']}): "
            + ", ".join(f"{r['method']} {r['cos_sim']:.4f}" for r in rows))
