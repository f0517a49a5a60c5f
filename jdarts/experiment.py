"""Experiment set-up: a search config -> validated blocks, data, space, optimisers, state.

Everything that turns a config into the objects of a search lives here, once,
for `jdarts search` (`jdarts.search_loop`), `jdarts hypergrad`
(`jdarts.hypergrad_report`) and the hypergradient probe. Each config block is
checked by the module that owns it (the space by its `validate_config`, the
optimisers by `jdarts.optim`, the schedule by `jdarts.schedules`, the
estimator by `jdarts.hypergrad`), all before anything is built or compiled.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, NamedTuple, Optional

import jax

from jdarts import data as data_lib
from jdarts.data import config_check as data_check
from jdarts import hypergrad
from jdarts import optim
from jdarts import runs
from jdarts import schedules
from jdarts import search as search_lib
from jdarts import spaces
from jdarts.config_lib import ConfigError


def _need(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


def validate(cfg) -> None:
  """Raises ConfigError naming the first impossible setting of a search config.

  One line each: the key, what it got, what would work. Runs before any data
  is read or anything compiled.
  """
  _need("space" in cfg and "arch" in cfg, "this is not a search config (it has no 'space' "
        "or 'arch' block; configs/train_*.py are for `jdarts train`); use e.g. "
        "--config=configs/quickstart.py.")
  runs.validate_blocks(cfg)
  runs.check_int(cfg, "hypergrad_probe_every", 0, " (0: off)")
  if "num_seeds" in cfg:
    runs.check_int(cfg, "num_seeds", 1, " (independent searches in one program; 1: one)")
  if "seed" in cfg.data:
    runs.check_int(cfg.data, "seed", -1, " (-1: follow the run's seed)", "data.")
  tp = cfg.data.train_portion
  _need(isinstance(tp, (int, float)) and 0.0 < tp < 1.0,
        f"data.train_portion must be in (0, 1), got {tp!r}.")
  data_check.validate_block(cfg.data)
  validate_space(cfg)
  optim.validate_weight(cfg.optim)
  optim.validate_arch(cfg.arch)
  a = cfg.arch
  _need(a.method in hypergrad.ESTIMATORS, f"arch.method={a.method!r} is unknown; choose "
        f"one of {', '.join(hypergrad.ESTIMATORS.names())}.")
  # Every estimator checks the settings it reads, the chosen method first; the
  # others too, so a bad arch.fd_eps is refused even while method=first_order
  # ignores it (it would surface later, in `jdarts hypergrad` or a probe).
  for method in [a.method] + [m for m in hypergrad.ESTIMATORS.names() if m != a.method]:
    try:  # the step supplies the real xi
      hypergrad.options(method, xi=1.0,
                        **hypergrad.estimator_options(a, cfg.optim.weight_decay))
    except (ValueError, TypeError) as e:
      raise ConfigError(f"arch.{e}") from None
  kind = a.get("step_kind", "auto")
  _need(kind == "auto" or kind in search_lib.STEP_KINDS, f"arch.step_kind={kind!r} is "
        f"unknown; choose 'auto' or one of {', '.join(search_lib.STEP_KINDS.names())}.")
  staged_methods = " or ".join(search_lib.STAGED_METHODS)
  _need(kind != "staged_bilevel" or a.method in search_lib.STAGED_METHODS,
        f"arch.step_kind='staged_bilevel' computes {staged_methods}, not "
        f"arch.method={a.method!r}; use arch.step_kind='auto'.")
  optim.virtual_step(a.get("virtual_step", "reference"), cfg.optim, lambda step: 0.0)
  _need(isinstance(a.xi, (int, float)) and math.isfinite(a.xi),
        f"arch.xi must be a finite number (< 0: the weights' learning rate), got {a.xi!r}.")


def validate_space(cfg) -> None:
  """ConfigError for an unknown `space` or a bad `model` block (the space's own checks)."""
  _need(cfg.space in spaces.SPACES or _builtin_space(cfg.space),
        f"space={cfg.space!r} is unknown; choose one of "
        f"{', '.join(sorted(set(spaces.SPACES.names()) | set(spaces.BUILTIN)))}.")
  spaces.space_class(cfg.space).validate_config(_plain(cfg.model))


def _builtin_space(name: str) -> bool:
  return name in spaces.BUILTIN


def _plain(block) -> Dict[str, Any]:
  return block.to_dict() if hasattr(block, "to_dict") else dict(block)


SearchData = data_lib.SearchData


def build_data(cfg, shard_index: int = 0, shard_count: int = 1) -> SearchData:
  """The search streams and held-out sets of `cfg.data` (`jdarts.data.build_search_data`)."""
  return data_lib.build_search_data(cfg, shard_index, shard_count)


def steps_per_epoch(cfg, data: SearchData) -> int:
  """Search steps per epoch: one batch of each split per step, so the shorter one.

  Raises:
    ConfigError: a batch is larger than a search split.
  """
  n = min(data.train.steps_per_epoch, data.val.steps_per_epoch)
  if n == 0:
    raise ConfigError(
        f"batch_size={cfg.batch_size} is larger than a search split "
        f"({data.num_val} examples); lower --config.batch_size.")
  return n


def build_space(cfg, info, bn_axis_name: Optional[str] = None):
  """The search space of `cfg.space` for the dataset `info`, checked by the space itself."""
  return spaces.get_space(cfg.space, _plain(cfg.model), info, bn_axis_name=bn_axis_name)


def device_space(cfg, info, axis: Optional[str]):
  """The space the search step runs: BatchNorm moments across `axis` if
  `parallel.cross_replica_bn` (axis None: one device)."""
  return build_space(cfg, info, bn_axis_name=axis if cfg.parallel.cross_replica_bn else None)


def make_step(cfg, space, setup: "SearchSetup", axis: Optional[str]):
  """The per-device search step of `cfg` (`jdarts.search.make_search_step`)."""
  return search_lib.make_search_step(
      space, cfg.arch, setup.w_opt, setup.a_opt, setup.schedule, axis_name=axis,
      weight_decay=cfg.optim.weight_decay, optim_cfg=cfg.optim,
      log_grad_correlation=bool(cfg.get("log_grad_correlation", False)))


def save_outputs(directory: str, space, alphas) -> Any:
  """Writes genotype.json and alphas.json of one search's `alphas`; returns the genotype."""
  alphas = jax.device_get(alphas)
  genotype = space.derive(alphas)
  runs.write_json(os.path.join(directory, "genotype.json"), space.genotype_json(genotype))
  runs.write_json(os.path.join(directory, "alphas.json"), runs.to_jsonable(alphas))
  return genotype


class SearchSetup(NamedTuple):
  """The optimisers and initial state of a search (see `init_search`)."""
  schedule: Any
  w_opt: Any
  a_opt: Any
  state: search_lib.SearchState


def init_search(cfg, space, steps_per_epoch: int) -> SearchSetup:
  """The weight schedule, both optimisers and the initial (unreplicated) search state.

  The state is initialised on `space.example_batch(batch_size)`, the global
  batch, so a carry (if the space has one) spans the global batch.
  """
  schedule = schedules.make_schedule(cfg.optim, cfg.epochs, steps_per_epoch)
  w_opt = optim.weight_optimizer(cfg.optim, schedule)
  a_opt = optim.arch_optimizer(cfg.arch)
  state = search_lib.init_state(space, jax.random.PRNGKey(cfg.seed),
                                space.example_batch(cfg.batch_size), w_opt, a_opt)
  return SearchSetup(schedule, w_opt, a_opt, state)


def with_dtype(cfg, dtype: str):
  """A resolved copy of `cfg` whose model computes in `dtype` (e.g. 'float64')."""
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.dtype = dtype
  return cfg
