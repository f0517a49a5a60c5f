"""Checks of a config's `data` block, owned beside the datasets it names.

`validate_block(data_cfg)` is called by `jdarts.experiment.validate` (search)
and `jdarts.train_config.validate` (train) before anything is read: an
unknown dataset, a negative cutout, or a `data_dir` that is not a directory
is one line naming the key, what it got and what would work.
"""
from __future__ import annotations

import os

from jdarts.config_lib import ConfigError
from jdarts.data.sources import DATASETS


def validate_block(data_cfg) -> None:
  """Raises ConfigError naming the first bad key of a `data` block.

  Args:
    data_cfg: the config's `data` block (name, data_dir, augment, cutout, ...).
  """
  name = data_cfg.get("name")
  if name not in DATASETS:
    raise ConfigError(f"data.name={name!r} is unknown; choose one of "
                      f"{', '.join(sorted(DATASETS))}.")
  cutout = data_cfg.get("cutout", 0)
  if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
    raise ConfigError(f"data.cutout must be an integer >= 0 (0: no cutout; the paper "
                      f"uses 16 on CIFAR-10), got {cutout!r}.")
  augment = data_cfg.get("augment", True)
  if not isinstance(augment, bool):
    raise ConfigError(f"data.augment must be True or False, got {augment!r}.")
  data_dir = data_cfg.get("data_dir", "") or ""
  if not isinstance(data_dir, str):
    raise ConfigError(f"data.data_dir must be a path (or '' for the default), got "
                      f"{data_dir!r}.")
  # Cloud paths (gs://...) cannot be checked here; tfds reports them itself.
  if data_dir and "://" not in data_dir and not os.path.isdir(os.path.expanduser(data_dir)):
    raise ConfigError(f"data.data_dir={data_dir} is not a directory; give the directory "
                      "holding the dataset, or '' for the default.")
