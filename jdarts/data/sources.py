"""Random-access image-classification sources and their metadata.

A *source* is any object with `__len__` and `__getitem__(i)` returning a record
`{'image': uint8 array (H, W, C), 'label': int}`; the pipelines in
`jdarts.data.pipeline` read nothing else. Sources come from:

* tfds (`tfds.data_source`, array_record files, no TensorFlow needed:
  `jdarts.data.tfds_source`),
* the CIFAR-10 python pickle files (`cifar-10-batches-py/`), read with numpy
  (`jdarts.data.cifar`),
* scikit-learn's 8x8 digits (ships with scikit-learn: the offline quickstart),
* deterministic synthetic images (tests and smoke runs).

Datasets are chosen by name from `DATASETS`; `register_dataset` adds more.
`load_source` checks what a loader returns against the dataset's
`DatasetInfo` and raises a one-line `DataError` for bad data.
scikit-learn is imported lazily so that importing `jdarts.data` stays cheap.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from jdarts.data.errors import DataError
from jdarts.data.errors import DatasetNotFoundError  # noqa: F401 (re-export)

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static metadata of an image-classification dataset.

  Attributes:
    name: registry name.
    image_shape: (H, W, C) of every image.
    num_classes: labels are in [0, num_classes).
    mean: per-channel mean of the training images, in [0, 1] units.
    std: per-channel standard deviation, in [0, 1] units.
    crop_padding: zero padding (pixels) before the random crop back to H x W
      when training with augmentation; 0 disables cropping.
    flip: whether training augmentation flips images left-right at random.
    train_transform: for records of varying size (ImageNet): `fn(images,
      seeds) -> uint8 (k, H, W, C)`, with `images` k uint8 (h_i, w_i, C)
      arrays and `seeds` k ints (one generator per image); replaces the
      crop/flip augmentation when training with `augment` on. None: records
      already have `image_shape`.
    eval_transform: `fn(images) -> uint8 (k, H, W, C)`, deterministic, for
      evaluation (and training with `augment` off) of such records.
  """
  name: str
  image_shape: Tuple[int, int, int]
  num_classes: int
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  crop_padding: int = 4
  flip: bool = True
  train_transform: Optional[Callable[..., np.ndarray]] = None
  eval_transform: Optional[Callable[..., np.ndarray]] = None

  def __post_init__(self):
    # Configs and JSON give lists; tuples keep the info hashable and comparable.
    for attr in ("image_shape", "mean", "std"):
      object.__setattr__(self, attr, tuple(getattr(self, attr)))
    channels = self.image_shape[-1]
    if len(self.image_shape) != 3:
      raise ValueError(
          f"image_shape must be (H, W, C), got {self.image_shape}.")
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(f"{self.name}: mean/std need {channels} entries, got "
                       f"{len(self.mean)}/{len(self.std)}.")


class SearchData(NamedTuple):
  """What a search reads: two checkpointable streams and the held-out sets.

  Attributes:
    train, val: iterators over search-train and search-val batches (one of each
      per step) with `steps_per_epoch`, `get_state()` and `set_state(state)`.
    info: the dataset's description (what a space reads its shapes from).
    eval_batches: {name: () -> iterable of batches} of the held-out sets
      ('search_val', and 'test' when configured); a final batch may be padded
      with `mask` 0 rows.
    num_val: examples in the search-val split (for messages).
    unit, items_per_row: throughput is reported as `<unit>_per_sec`, counting
      `items_per_row` per batch row (images: 1; BPTT segments: their tokens).
  """
  train: Any
  val: Any
  info: Any
  eval_batches: Dict[str, Callable[[], Any]]
  num_val: int
  unit: str = "images"
  items_per_row: int = 1


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """A registered dataset: `loader(split, data_dir) -> source` and its info.

  `search_data(cfg, shard_index, shard_count) -> SearchData`, when set,
  replaces the image pipeline for searches (e.g. token streams cut into BPTT
  segments): a dataset that is not a set of images plugs in here.
  """
  loader: Callable[[str, Optional[str]], Any]
  info: Any
  search_data: Optional[Callable[[Any, int, int], SearchData]] = None


DATASETS: Dict[str, DatasetEntry] = {}


def register_dataset(name: str, loader_fn: Callable[[str, Optional[str]], Any],
                     info: Any, *, overwrite: bool = False,
                     search_data: Optional[Callable[[Any, int, int], SearchData]] = None
                     ) -> None:
  """Adds a dataset to `DATASETS` so configs can pick it by name.

  Args:
    name: registry key.
    loader_fn: `loader_fn(split, data_dir) -> source`, where a source has
      `__len__` and `__getitem__` returning `{'image': uint8 (H, W, C),
      'label': int}`.
    info: the dataset's `DatasetInfo` (its `image_shape` must match records),
      or for a dataset with its own `search_data` any description its spaces read.
    overwrite: replace an existing entry instead of raising.
    search_data: optional `(cfg, shard_index, shard_count) -> SearchData`
      building the search streams itself instead of the image pipeline.
  """
  if name in DATASETS and not overwrite:
    raise ValueError(f"dataset {name!r} is already registered; pass "
                     "overwrite=True to replace it.")
  DATASETS[name] = DatasetEntry(loader_fn, info, search_data)


def _entry(name: str) -> DatasetEntry:
  try:
    return DATASETS[name]
  except KeyError:
    raise KeyError(f"Unknown dataset {name!r}. Known: "
                   f"{', '.join(sorted(DATASETS))}.") from None


def get_entry(name: str) -> DatasetEntry:
  """The registered entry of `name` (KeyError naming the known datasets)."""
  return _entry(name)


def get_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` registered under `name` (KeyError if unknown)."""
  return _entry(name).info


def load_source(name: str, split: str, data_dir: Optional[str] = None):
  """Returns the random-access source of one split of a registered dataset.

  What is loaded is checked against the dataset's `DatasetInfo` (see
  `check_source`), so bad data fails here, with one line, rather than as a
  shape error deep inside the first step.

  Args:
    name: registry name, e.g. 'cifar10', 'digits', 'synthetic'.
    split: 'train' or 'test' (tfds-backed datasets also accept tfds split
      strings such as 'train[:10%]').
    data_dir: where the files are; meaning depends on the dataset (for
      'cifar10': a folder holding `cifar-10-batches-py/`, that folder itself,
      or a tfds data_dir). None uses the dataset's default.

  Returns:
    A source: `len(source)` records, `source[i] -> {'image': uint8 (H, W, C),
    'label': int}`; its `origin` attribute (where settable) names the dataset,
    split and folder for later messages.

  Raises:
    KeyError: unknown dataset name (the message lists the known ones).
    DatasetNotFoundError: the files are missing (the message says the fix).
    DataError: the files are there but unusable (the message, one line, names
      the file or the dataset and split, the problem and the fix).
  """
  entry = _entry(name)
  source = entry.loader(split, data_dir)
  where = getattr(source, "location", None) or data_dir
  origin = f"{name} split {split!r}" + (f" from {where}" if where else "")
  check_source(source, entry.info, origin)
  try:
    source.origin = origin
  except AttributeError:  # a user's source with __slots__ or a property
    pass
  return source


def check_split(name: str, split: str) -> None:
  """Raises `DataError` unless `split` is one of `SPLITS`."""
  if split not in SPLITS:
    raise DataError(f"{name}: unknown split {split!r}; use one of "
                    f"{', '.join(SPLITS)}.")


def source_origin(source) -> str:
  """Where `source` comes from, for messages (its `origin`, else its size)."""
  origin = getattr(source, "origin", None)
  return origin or f"a source of {len(source)} examples"


def check_source(source, info: DatasetInfo, origin: str) -> None:
  """Cheap load-time checks of a source against its `DatasetInfo`.

  In-memory sources are checked whole (shape, label range); others (tfds)
  through their first record only, so that opening a split reads one record.

  Args:
    source: what a dataset's loader returned.
    info: the dataset's registered metadata.
    origin: names the dataset, split and folder in messages.

  Raises:
    DataError: no examples, images of a shape or dtype other than `info`
      declares, labels outside [0, info.num_classes), or records that are not
      `{'image', 'label'}` dicts.
  """
  if len(source) == 0:
    raise DataError(f"{origin} has 0 examples; point data_dir at the complete "
                    "dataset or choose a non-empty split.")
  if isinstance(source, ArraySource):
    shape, labels = source.images.shape[1:], source.labels
  else:
    try:
      record = source[0]
      image, label = np.asarray(record["image"]), int(record["label"])
    except (KeyError, TypeError, ValueError) as e:
      if isinstance(e, DataError):
        raise
      raise DataError(f"{origin}: record 0 is not an {{'image': uint8 (H, W, "
                      f"C), 'label': int}} dict ({e!r}); fix the dataset's "
                      "loader.") from e
    if image.dtype != np.uint8:
      raise DataError(f"{origin}: record 0 has a {image.dtype} image; records "
                      "hold uint8 pixels (0..255): fix the data or its loader.")
    shape, labels = image.shape, np.asarray([label])
  c = info.image_shape[-1]
  varying = info.train_transform is not None or info.eval_transform is not None
  if (len(shape) != 3 or shape[-1] != c) if varying else (
      tuple(shape) != info.image_shape):
    want = f"(H, W, {c})" if varying else str(info.image_shape)
    raise DataError(f"{origin}: images have shape {tuple(shape)}, but "
                    f"{info.name}'s DatasetInfo declares {want}; fix the data "
                    "or register the dataset with its true image_shape.")
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= info.num_classes:
    raise DataError(f"{origin}: labels range over [{lo}, {hi}], outside "
                    f"[0, {info.num_classes}) of {info.name}; fix the labels "
                    "or register the dataset with the right num_classes.")


# ---------------------------------------------------------------- sources


class ArraySource:
  """An in-memory source over arrays; the pipelines gather batches from it
  with one fancy-indexing call instead of per-record Python calls.

  Attributes:
    images: uint8 (N, H, W, C).
    labels: int32 (N,).
    origin: where the arrays come from, for messages (None: unknown).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               origin: Optional[str] = None):
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int32)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise DataError("images must be uint8 of shape (N, H, W, C), got "
                      f"{images.dtype} {images.shape}.")
    if labels.shape != images.shape[:1]:
      raise DataError(f"labels shape {labels.shape} does not match "
                      f"{images.shape[0]} images.")
    # C order: the pipelines copy whole images and reshape without copying.
    self.images = np.ascontiguousarray(images)
    self.labels = labels
    self.origin = origin

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return {"image": self.images[index], "label": int(self.labels[index])}

  def __repr__(self) -> str:
    return f"ArraySource(n={len(self)}, image_shape={self.images.shape[1:]})"


class SubsetSource:
  """The records `parent[indices[i]]` of another source, without copying."""

  def __init__(self, parent, indices: Sequence[int],
               origin: Optional[str] = None):
    self.parent = parent
    self.indices = np.asarray(indices, dtype=np.int64)
    self.origin = origin
    if self.indices.size and (self.indices.min() < 0 or
                              self.indices.max() >= len(parent)):
      raise IndexError(
          f"subset indices out of range for {len(parent)} records.")

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return self.parent[int(self.indices[index])]

  def __repr__(self) -> str:
    return f"SubsetSource(n={len(self)}, parent={self.parent!r})"


def subset(source, indices, origin: Optional[str] = None) -> Any:
  """Returns the records `source[indices[i]]`; a zero-copy view when possible.

  Args:
    source: any source.
    indices: a `range` or a sequence of ints.
    origin: names the subset in messages.

  Returns:
    An `ArraySource` view (for an `ArraySource` and a contiguous `range`) or a
    `SubsetSource`.
  """
  if isinstance(source, ArraySource) and isinstance(indices, range) and \
      indices.step == 1:
    sl = slice(indices.start, indices.stop)
    return ArraySource(source.images[sl], source.labels[sl], origin)
  return SubsetSource(source, list(indices), origin)


def search_split(source, train_portion: float = 0.5):
  """Splits a training source into DARTS's weight and architecture halves.

  As the reference `train_search.py`: with `n = len(source)` and
  `split = floor(train_portion * n)`, the weights train on indices
  `[0, split)` and the architecture on `[split, n)`, unshuffled (the pipelines
  shuffle within each part).

  Args:
    source: the training split.
    train_portion: fraction of examples used for the weight step.

  Returns:
    (search_train, search_val) sources, whose `origin` names the part.

  Raises:
    DataError: a part would be empty (one line naming the source).
  """
  if not 0.0 < train_portion < 1.0:
    raise ValueError(f"train_portion must be in (0, 1), got {train_portion}.")
  n = len(source)
  split = int(np.floor(train_portion * n))
  origin = source_origin(source)
  if split == 0 or split == n:
    raise DataError(f"{origin}: train_portion={train_portion} splits its {n} "
                    f"examples into {split} and {n - split}, and both parts "
                    "need examples; use more data or a train_portion nearer "
                    "0.5.")
  part = f"{origin} [%d:%d] (train_portion={train_portion})"
  return (subset(source, range(0, split), part % (0, split)),
          subset(source, range(split, n), part % (split, n)))


# ---------------------------------------------------------------- digits

DIGITS_NUM_TRAIN = 1500  # of 1797; the remaining 297 are the test split.
_DIGITS_SPLIT_SEED = 0

DIGITS_INFO = DatasetInfo(
    name="digits",
    image_shape=(8, 8, 1),
    num_classes=10,
    # Computed from the train split (tests/test_data.py recomputes them).
    mean=(0.3057421977124183,),
    std=(0.37590485823773756,),
    # 8x8 digits: a 1-pixel shift is already 1/8 of the image, and a mirrored
    # digit is a different (or no) digit, so no flips.
    crop_padding=1,
    flip=False,
)


def load_digits(split: str, data_dir: Optional[str] = None) -> ArraySource:
  """scikit-learn's 8x8 handwritten digits as uint8 (8, 8, 1) images.

  Pixel values 0..16 are scaled by 255/16 and rounded. A fixed permutation
  (seed 0) of the 1797 images gives 'train' (first 1500) and 'test' (297).

  Args:
    split: 'train' or 'test'.
    data_dir: unused (the data ships inside scikit-learn).

  Returns:
    An `ArraySource`.
  """
  del data_dir
  check_split("digits", split)
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(images))
  idx = perm[:DIGITS_NUM_TRAIN] if split == "train" else perm[DIGITS_NUM_TRAIN:]
  return ArraySource(np.ascontiguousarray(images[idx]), digits.target[idx])


# ---------------------------------------------------------------- synthetic

SYNTHETIC_SIZES = {"train": 2048, "test": 512}

SYNTHETIC_INFO = DatasetInfo(
    name="synthetic",
    image_shape=(32, 32, 3),
    num_classes=10,
    # Nominal values: pixels are class templates in [64, 192] plus noise.
    mean=(0.5, 0.5, 0.5),
    std=(0.2, 0.2, 0.2),
)


def make_synthetic(num_examples: int, image_shape=(32, 32, 3),
                   num_classes: int = 10, seed: int = 0,
                   noise: float = 32.0) -> ArraySource:
  """Deterministic random images whose label can be learned.

  Each class has a fixed smooth random template (a coarse 4x4 grid of
  intensities in [64, 192], upsampled); an example is its class template plus
  Gaussian pixel noise, so a small network (or nearest-class-mean) separates
  the classes. Templates depend only on (image_shape, num_classes), so splits
  drawn with different seeds share them.

  Args:
    num_examples: N.
    image_shape: (H, W, C).
    num_classes: labels are `i % num_classes` after a seeded shuffle.
    seed: seeds the labels and the noise.
    noise: standard deviation of the pixel noise (0..255 units).

  Returns:
    An `ArraySource` with uint8 images (N, H, W, C).
  """
  h, w, c = image_shape
  template_rng = np.random.default_rng([h, w, c, num_classes])
  coarse = template_rng.uniform(64, 192, size=(num_classes, 4, 4, c))
  rows = np.arange(h) * 4 // h
  cols = np.arange(w) * 4 // w
  templates = coarse[:, rows][:, :, cols]  # (K, H, W, C)
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_examples) % num_classes)
  images = templates[labels] + rng.normal(0.0, noise, (num_examples, h, w, c))
  images = np.clip(np.round(images), 0, 255).astype(np.uint8)
  return ArraySource(images, labels)


def _load_synthetic(split: str, data_dir: Optional[str] = None) -> ArraySource:
  del data_dir
  check_split("synthetic", split)
  return make_synthetic(SYNTHETIC_SIZES[split], SYNTHETIC_INFO.image_shape,
                        SYNTHETIC_INFO.num_classes,
                        seed=SPLITS.index(split) + 1)


register_dataset("digits", load_digits, DIGITS_INFO)
register_dataset("synthetic", _load_synthetic, SYNTHETIC_INFO)
