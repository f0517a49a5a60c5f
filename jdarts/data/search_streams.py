"""The streams a search reads, for any registered dataset.

`build_search_data(cfg, shard_index, shard_count)` returns a `SearchData`: the
dataset's own `search_data` builder when it registered one (a dataset that is
not a set of images, e.g. token streams cut into BPTT segments), else the image
pipeline here: the training split cut in two as the DARTS reference does
(`search_split`, `data.train_portion`), each half shuffled and augmented by
`make_train_iterator`, and the held-out sets ('search_val', and 'test' with
`data.test_split`) as padded evaluation batches.
"""
from __future__ import annotations

from jdarts.data.pipeline import make_eval_iterator, make_train_iterator
from jdarts.data.sources import SearchData, get_entry, load_source, search_split


def data_seed(cfg) -> int:
  """The seed of the search streams' order: `data.seed` if >= 0, else the run's `seed`."""
  seed = cfg.data.get("seed", -1)
  return cfg.seed if seed is None or seed < 0 else seed


def image_search_data(cfg, shard_index: int = 0, shard_count: int = 1) -> SearchData:
  """The image pipeline of a search config's `data` block (see the module docstring)."""
  d = cfg.data
  info = get_entry(d.name).info
  source = load_source(d.name, "train", d.data_dir or None)
  s_train, s_val = search_split(source, d.train_portion)
  common = dict(batch_size=cfg.batch_size, augment=d.augment, cutout=d.cutout,
                shard_index=shard_index, shard_count=shard_count)
  # Different seeds for the two halves, so their shuffles are not paired.
  seed = data_seed(cfg)
  train_it = make_train_iterator(s_train, info, seed=2 * seed, **common)
  val_it = make_train_iterator(s_val, info, seed=2 * seed + 1, **common)
  held_out = {"search_val": s_val}
  if d.get("test_split"):
    held_out["test"] = load_source(d.name, d.test_split, d.data_dir or None)
  eval_batches = {name: (lambda s=s: make_eval_iterator(s, info, batch_size=cfg.batch_size))
                  for name, s in held_out.items()}
  return SearchData(train_it, val_it, info, eval_batches, len(s_val))


def build_search_data(cfg, shard_index: int = 0, shard_count: int = 1) -> SearchData:
  """`SearchData` of `cfg.data.name`: its registered builder, or the image pipeline."""
  build = get_entry(cfg.data.name).search_data or image_search_data
  return build(cfg, shard_index, shard_count)
