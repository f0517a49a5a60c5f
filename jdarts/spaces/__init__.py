"""Search spaces, chosen by name from `SPACES`; the protocol is `jdarts.spaces.base`.

Built-in spaces (each a package here) register themselves when first needed,
keeping `import jdarts` light. Users register their own with
`@SPACES.register('name')` on a class implementing `SearchSpace` (subclassing
`SpaceBase` fills in the optional parts), then set `config.space = 'name'`.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from jdarts.spaces.base import SPACES, Batch, SearchSpace, SpaceBase, config_get

BUILTIN = ("darts_cnn", "darts_rnn", "nb201", "sharp", "sharp_sep_conv_darts", "multichannel")

__all__ = ["SPACES", "Batch", "SearchSpace", "SpaceBase", "config_get", "get_space",
           "space_class", "BUILTIN"]


def _register_builtin() -> None:
  # The import registers the space; kept out of module import time.
  from jdarts.spaces import darts_cnn  # noqa: F401
  from jdarts.spaces import darts_rnn  # noqa: F401
  from jdarts.spaces import nb201  # noqa: F401
  from jdarts.spaces import sharp  # noqa: F401  ('sharp', 'sharp_sep_conv_darts')
  from jdarts.spaces import hypercuboid  # noqa: F401  ('multichannel')


def space_class(name: str):
  """The class registered as `name` (KeyError listing the known spaces otherwise)."""
  _register_builtin()
  return SPACES.get(name)


def get_space(name: str, model_cfg: Mapping[str, Any], info: Any, *,
              bn_axis_name: Optional[str] = None) -> SearchSpace:
  """Validates `model_cfg` with the space's own checks, then builds the space.

  Args:
    name: a registered space name (`config.space`).
    model_cfg: the config's `model` block (ConfigDict or dict).
    info: the dataset description the space reads its input shape from.
    bn_axis_name: device axis for normalisation statistics, or None.
  """
  cls = space_class(name)
  model_cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  cls.validate_config(model_cfg)
  return cls.from_config(model_cfg, info, bn_axis_name=bn_axis_name)
