"""Tiny search-space configs shared by the tests (small graphs compile fast on CPU)."""
import ml_collections

from jdarts import config_lib
from jdarts import data

TINY_PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def tiny_model(**overrides):
  """A 3-cell supernet (normal, reduce, reduce) of 1-node cells, 4 ops, 4 channels."""
  m = dict(init_channels=4, layers=3, steps=1, multiplier=1, stem_multiplier=1,
           primitives=TINY_PRIMITIVES)
  m.update(overrides)
  return m


def image_info(image_shape=(8, 8, 3), num_classes=10) -> data.DatasetInfo:
  """A dataset description for building a space without loading data."""
  channels = image_shape[-1]
  return data.DatasetInfo(name="test", image_shape=tuple(image_shape),
                          num_classes=num_classes, mean=(0.5,) * channels,
                          std=(0.25,) * channels)


def tiny_search_config(tmp_cache: str = "", **overrides) -> ml_collections.ConfigDict:
  """A quickstart-like search on 8x8 digits that compiles in seconds."""
  c = config_lib.search_defaults()
  c.data.name = "digits"
  c.data.test_split = "test"
  c.model.update(tiny_model())
  c.batch_size = 8
  c.epochs = 1
  c.max_steps = 3
  c.log_every = 1
  c.progress = False
  c.compilation_cache_dir = tmp_cache
  c.arch.learning_rate = 3e-2
  c.parallel.num_devices = 1   # the tests' 8 fake devices only where a test asks
  c.update(overrides)
  return c


_CONFIG_FILE = '''import sys
sys.path.insert(0, {tests_dir!r})
import helpers


def get_config():
  c = helpers.tiny_search_config({cache!r})
{extra}  return c
'''


def shared_cache_dir(fallback) -> str:
  """The session's shared XLA cache (tests/conftest.py), else `fallback`."""
  import os
  return os.environ.get("JDARTS_TEST_XLA_CACHE") or str(fallback)


def write_tiny_config(directory, *extra_lines: str) -> str:
  """Writes a configs/*.py-style file for `tiny_search_config` and returns its path.

  Args:
    directory: a pathlib.Path; the XLA compile cache goes beside the file.
    *extra_lines: statements on the config `c`, e.g. "c.checkpoint.every_steps = 1".
  """
  import os
  path = directory / "tiny.py"
  extra = "".join(f"  {line}\n" for line in extra_lines)
  path.write_text(_CONFIG_FILE.format(tests_dir=os.path.dirname(os.path.abspath(__file__)),
                                      cache=shared_cache_dir(directory / "xla_cache"),
                                      extra=extra))
  return str(path)


def make_space(model, *, image_shape=(8, 8, 1), num_classes=10, space="darts_cnn"):
  """A search space from a model dict, for inputs of `image_shape` and `num_classes`.

  `model` may hold 'num_classes' and 'bn_axis_name' (as the old get_space
  took them); they override the keyword defaults.
  """
  from jdarts import data, spaces
  model = dict(model)
  num_classes = model.pop("num_classes", num_classes)
  bn_axis_name = model.pop("bn_axis_name", None)
  c = image_shape[-1]
  info = data.DatasetInfo("test", tuple(image_shape), num_classes, (0.5,) * c, (0.25,) * c)
  return spaces.get_space(space, model, info, bn_axis_name=bn_axis_name)
