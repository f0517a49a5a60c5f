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
from typing import Any, Dict, NamedTuple, Optional

import jax

from jdarts import data as data_lib
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
  runs.validate_blocks(cfg)
  runs.check_int(cfg, "hypergrad_probe_every", 0, " (0: off)")
  tp = cfg.data.train_portion
  _need(isinstance(tp, (int, float)) and 0.0 < tp < 1.0,
        f"data.train_portion must be in (0, 1), got {tp!r}.")
  _need(cfg.data.name in data_lib.DATASETS, f"data.name={cfg.data.name!r} is unknown; "
        f"choose one of {', '.join(sorted(data_lib.DATASETS))}.")
  _need(cfg.space in spaces.SPACES or _builtin_space(cfg.space),
        f"space={cfg.space!r} is unknown; choose one of "
        f"{', '.join(sorted(set(spaces.SPACES.names()) | set(spaces.BUILTIN)))}.")
  spaces.space_class(cfg.space).validate_config(_plain(cfg.model))
  optim.validate_weight(cfg.optim)
  optim.validate_arch(cfg.arch)
  a = cfg.arch
  _need(a.method in hypergrad.ESTIMATORS, f"arch.method={a.method!r} is unknown; choose "
        f"one of {', '.join(hypergrad.ESTIMATORS.names())}.")
  try:  # the estimator's own checks; the step supplies the real xi
    hypergrad.options(a.method, xi=1.0,
                      **search_lib.estimator_options(a, cfg.optim.weight_decay))
  except ValueError as e:
    raise ConfigError(f"arch.{e}") from None
  kind = a.get("step_kind", "auto")
  _need(kind == "auto" or kind in search_lib.STEP_KINDS, f"arch.step_kind={kind!r} is "
        f"unknown; choose 'auto' or one of {', '.join(search_lib.STEP_KINDS.names())}.")
  optim.virtual_step(a.get("virtual_step", "reference"), cfg.optim, lambda step: 0.0)
  _need(isinstance(a.xi, (int, float)) and math.isfinite(a.xi),
        f"arch.xi must be a finite number (< 0: the weights' learning rate), got {a.xi!r}.")


def _builtin_space(name: str) -> bool:
  return name in spaces.BUILTIN


def _plain(block) -> Dict[str, Any]:
  return block.to_dict() if hasattr(block, "to_dict") else dict(block)


class SearchData(NamedTuple):
  """The data of a search.

  Attributes:
    train, val: checkpointable iterators over the search-train and search-val
      halves (one batch of each per step).
    info: the dataset's description.
    eval_sources: held-out sources by name: 'search_val', and 'test' when
      `data.test_split` is set.
  """
  train: Any
  val: Any
  info: Any
  eval_sources: Dict[str, Any]


def build_data(cfg, shard_index: int = 0, shard_count: int = 1) -> SearchData:
  """The search-train and search-val streams and the held-out sources of `cfg.data`."""
  d = cfg.data
  info = data_lib.get_info(d.name)
  source = data_lib.load_source(d.name, "train", d.data_dir or None)
  s_train, s_val = data_lib.search_split(source, d.train_portion)
  common = dict(batch_size=cfg.batch_size, augment=d.augment, cutout=d.cutout,
                shard_index=shard_index, shard_count=shard_count)
  # Different seeds for the two halves, so their shuffles are not paired.
  train_it = data_lib.make_train_iterator(s_train, info, seed=2 * cfg.seed, **common)
  val_it = data_lib.make_train_iterator(s_val, info, seed=2 * cfg.seed + 1, **common)
  eval_sources = {"search_val": s_val}
  if d.get("test_split"):
    eval_sources["test"] = data_lib.load_source(d.name, d.test_split, d.data_dir or None)
  return SearchData(train_it, val_it, info, eval_sources)


def steps_per_epoch(cfg, data: SearchData) -> int:
  """Search steps per epoch: one batch of each split per step, so the shorter one.

  Raises:
    ConfigError: a batch is larger than a search split.
  """
  n = min(data.train.steps_per_epoch, data.val.steps_per_epoch)
  if n == 0:
    raise ConfigError(
        f"batch_size={cfg.batch_size} is larger than a search split "
        f"({len(data.eval_sources['search_val'])} examples); lower --config.batch_size.")
  return n


def build_space(cfg, info, bn_axis_name: Optional[str] = None):
  """The search space of `cfg.space` for the dataset `info`, checked by the space itself."""
  return spaces.get_space(cfg.space, _plain(cfg.model), info, bn_axis_name=bn_axis_name)


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
