"""Random-access image-classification sources and their metadata.

A *source* is any object with `__len__` and `__getitem__(i)` returning a record
`{'image': uint8 array (H, W, C), 'label': int}`; the pipelines in
`jdarts.data.pipeline` read nothing else. Sources come from:

* tfds (`tfds.data_source`, array_record files, no TensorFlow needed),
* the CIFAR-10 python pickle files (`cifar-10-batches-py/`), read with numpy,
* scikit-learn's 8x8 digits (ships with scikit-learn: the offline quickstart),
* deterministic synthetic images (tests and smoke runs).

Datasets are chosen by name from `DATASETS`; `register_dataset` adds more.
tensorflow_datasets and scikit-learn are imported lazily so that importing
`jdarts.data` stays cheap and never pulls in TensorFlow.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not on disk; the message says how to get it."""


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


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """A registered dataset: `loader(split, data_dir) -> source` and its info."""
  loader: Callable[[str, Optional[str]], Any]
  info: DatasetInfo


DATASETS: Dict[str, DatasetEntry] = {}


def register_dataset(name: str, loader_fn: Callable[[str, Optional[str]], Any],
                     info: DatasetInfo, *, overwrite: bool = False) -> None:
  """Adds a dataset to `DATASETS` so configs can pick it by name.

  Args:
    name: registry key.
    loader_fn: `loader_fn(split, data_dir) -> source`, where a source has
      `__len__` and `__getitem__` returning `{'image': uint8 (H, W, C),
      'label': int}`.
    info: the dataset's `DatasetInfo` (its `image_shape` must match records).
    overwrite: replace an existing entry instead of raising.
  """
  if name in DATASETS and not overwrite:
    raise ValueError(f"dataset {name!r} is already registered; pass "
                     "overwrite=True to replace it.")
  DATASETS[name] = DatasetEntry(loader_fn, info)


def _entry(name: str) -> DatasetEntry:
  try:
    return DATASETS[name]
  except KeyError:
    raise KeyError(f"Unknown dataset {name!r}. Known: "
                   f"{', '.join(sorted(DATASETS))}.") from None


def get_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` registered under `name` (KeyError if unknown)."""
  return _entry(name).info


def load_source(name: str, split: str, data_dir: Optional[str] = None):
  """Returns the random-access source of one split of a registered dataset.

  Args:
    name: registry name, e.g. 'cifar10', 'digits', 'synthetic'.
    split: 'train' or 'test' (tfds-backed datasets also accept tfds split
      strings such as 'train[:10%]').
    data_dir: where the files are; meaning depends on the dataset (for
      'cifar10': a folder holding `cifar-10-batches-py/`, that folder itself,
      or a tfds data_dir). None uses the dataset's default.

  Returns:
    A source: `len(source)` records, `source[i] -> {'image': uint8 (H, W, C),
    'label': int}`.

  Raises:
    KeyError: unknown dataset name (the message lists the known ones).
    DatasetNotFoundError: the files are missing (the message says the fix).
  """
  return _entry(name).loader(split, data_dir)


def _check_split(name: str, split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"{name}: unknown split {split!r}; use one of {SPLITS}.")


# ---------------------------------------------------------------- sources


class ArraySource:
  """An in-memory source over arrays; the pipelines gather batches from it
  with one fancy-indexing call instead of per-record Python calls.

  Attributes:
    images: uint8 (N, H, W, C).
    labels: int32 (N,).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int32)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError("images must be uint8 of shape (N, H, W, C), got "
                       f"{images.dtype} {images.shape}.")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"labels shape {labels.shape} does not match "
                       f"{images.shape[0]} images.")
    # C order: the pipelines copy whole images and reshape without copying.
    self.images = np.ascontiguousarray(images)
    self.labels = labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return {"image": self.images[index], "label": int(self.labels[index])}

  def __repr__(self) -> str:
    return f"ArraySource(n={len(self)}, image_shape={self.images.shape[1:]})"


class SubsetSource:
  """The records `parent[indices[i]]` of another source, without copying."""

  def __init__(self, parent, indices: Sequence[int]):
    self.parent = parent
    self.indices = np.asarray(indices, dtype=np.int64)
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


class TfdsSource:
  """Adapts a `tfds.data_source` to plain `{'image', 'label'}` records."""

  def __init__(self, data_source):
    self.data_source = data_source
    self._batched_reads = hasattr(data_source, "__getitems__")

  def __len__(self) -> int:
    return len(self.data_source)

  @staticmethod
  def _record(example) -> Dict[str, Any]:
    return {"image": np.asarray(example["image"]),
            "label": int(example["label"])}

  def __getitem__(self, index: int) -> Dict[str, Any]:
    return self._record(self.data_source[int(index)])

  def __getitems__(self, indices: Sequence[int]):
    keys = [int(i) for i in indices]
    if self._batched_reads and keys:
      # array_record reads a list of keys in one call (in parallel).
      try:
        return [self._record(e) for e in self.data_source.__getitems__(keys)]
      except TypeError:
        # tfds.testing.mock_data (4.9.10) installs a `__getitems__` that is
        # called without `self` and raises TypeError; read one by one.
        self._batched_reads = False
    return [self._record(self.data_source[k]) for k in keys]

  def __repr__(self) -> str:
    return f"TfdsSource(n={len(self)})"


def subset(source, indices) -> Any:
  """Returns the records `source[indices[i]]`; a zero-copy view when possible.

  Args:
    source: any source.
    indices: a `range` or a sequence of ints.

  Returns:
    An `ArraySource` view (for an `ArraySource` and a contiguous `range`) or a
    `SubsetSource`.
  """
  if isinstance(source, ArraySource) and isinstance(indices, range) and \
      indices.step == 1:
    sl = slice(indices.start, indices.stop)
    return ArraySource(source.images[sl], source.labels[sl])
  return SubsetSource(source, list(indices))


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
    (search_train, search_val) sources.
  """
  if not 0.0 < train_portion < 1.0:
    raise ValueError(f"train_portion must be in (0, 1), got {train_portion}.")
  n = len(source)
  split = int(np.floor(train_portion * n))
  return subset(source, range(0, split)), subset(source, range(split, n))


# ---------------------------------------------------------------- CIFAR-10

CIFAR10_INFO = DatasetInfo(
    name="cifar10",
    image_shape=(32, 32, 3),
    num_classes=10,
    # Values of the DARTS reference code (utils._data_transforms_cifar10).
    mean=(0.49139968, 0.48215827, 0.44653124),
    std=(0.24703233, 0.24348505, 0.26158768),
    crop_padding=4,
    flip=True,
)

_CIFAR_PICKLE_DIR = "cifar-10-batches-py"
_CIFAR_PICKLE_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def find_cifar10_pickle_dir(data_dir: Optional[str]) -> Optional[str]:
  """Returns the folder holding the CIFAR-10 pickle files, or None.

  Args:
    data_dir: a folder containing `cifar-10-batches-py/`, or that folder.
  """
  if not data_dir:
    return None
  for candidate in (os.path.join(data_dir, _CIFAR_PICKLE_DIR), data_dir):
    if any(os.path.isfile(os.path.join(candidate, f))
           for files in _CIFAR_PICKLE_FILES.values() for f in files):
      return candidate
  return None


def load_cifar10_pickle(batches_dir: str, split: str) -> ArraySource:
  """Reads a split of CIFAR-10 from the python pickle files.

  Args:
    batches_dir: the `cifar-10-batches-py` folder (data_batch_1..5,
      test_batch; each a pickle of {b'data': uint8 (n, 3072) in CHW order,
      b'labels': list of n ints}).
    split: 'train' or 'test'.

  Returns:
    An `ArraySource` with images uint8 (N, 32, 32, 3) (HWC) and labels (N,).
  """
  _check_split("cifar10", split)
  images, labels = [], []
  for fname in _CIFAR_PICKLE_FILES[split]:
    path = os.path.join(batches_dir, fname)
    if not os.path.isfile(path):
      raise DatasetNotFoundError(
          f"CIFAR-10 pickle file {path} is missing; the {split} split needs "
          f"{', '.join(_CIFAR_PICKLE_FILES[split])} (from "
          "https://www.cs.toronto.edu/~kriz/cifar.html).")
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(np.asarray(batch[b"labels"], dtype=np.int32))
  # Contiguous HWC so that batch gathers copy whole images.
  return ArraySource(np.ascontiguousarray(np.concatenate(images)),
                     np.concatenate(labels))


def _tfds_default_data_dir() -> str:
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_datasets.core import constants
  return os.path.expanduser(constants.DATA_DIR)


def _tfds_prepared_formats(data_dir: str, tfds_name: str):
  """Scans `data_dir/tfds_name/*/dataset_info.json` of prepared versions.

  Returns:
    (readable, formats): whether some version has array_record files (which
    `tfds.data_source` reads), and the file formats of the versions that don't.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  readable, formats = False, set()
  pattern = os.path.join(data_dir, tfds_name, "*", "dataset_info.json")
  for info_path in glob.glob(pattern):
    try:
      with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    except (OSError, ValueError):
      continue
    available = {info.get("fileFormat") or "tfrecord"}
    available.update(info.get("alternativeFileFormats", []))
    if "array_record" in available:
      readable = True
    else:
      formats |= available
  return readable, formats


def load_tfds(tfds_name: str, split: str, data_dir: Optional[str], *,
              pretty_name: str, fix: str = ".") -> TfdsSource:
  """Opens a prepared tfds dataset with `tfds.data_source` (no TensorFlow).

  Args:
    tfds_name: tfds builder name, e.g. 'cifar10'.
    split: tfds split string.
    data_dir: tfds data_dir; None uses tfds's default (TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    pretty_name: dataset name for messages.
    fix: extra advice appended to the not-found message.

  Returns:
    A `TfdsSource`.

  Raises:
    DatasetNotFoundError: with a one-line message naming the folder and the fix.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    # download=False: never start a download or a TensorFlow-based build from
    # inside a training run; say how to prepare the data instead.
    ds = tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                          download=False)
  except (tfds.core.DatasetNotFoundError, NotImplementedError, KeyError,
          FileNotFoundError, AssertionError) as e:
    # tfds reports a missing dataset as "random access ... FileFormat.TFRECORD
    # is not supported" (NotImplementedError) for an existing data_dir and as
    # "`splits` is empty" (KeyError) for a missing one; both mislead.
    where = data_dir or _tfds_default_data_dir()
    readable, formats = _tfds_prepared_formats(where, tfds_name)
    if readable:  # The data is there: a genuine error (e.g. a bad split).
      raise
    logger.debug("tfds.data_source(%r) failed: %s", tfds_name, e)
    build = (f"`tfds build {tfds_name} --data_dir={where} "
             "--file_format=array_record` (needs tensorflow)")
    if formats:
      msg = (f"{pretty_name} under {where} is prepared as "
             f"{'/'.join(sorted(formats))}, which tfds.data_source cannot "
             f"read. Rebuild it with {build}{fix}")
    else:
      msg = (f"{pretty_name} not found under {where}. "
             f"Prepare it with {build}{fix}")
    raise DatasetNotFoundError(msg) from None
  return TfdsSource(ds)


def _load_cifar10(split: str, data_dir: Optional[str]):
  batches_dir = find_cifar10_pickle_dir(data_dir)
  if batches_dir is not None:
    return load_cifar10_pickle(batches_dir, split)
  return load_tfds(
      "cifar10", split, data_dir, pretty_name="CIFAR-10",
      fix=(", or point --config.data.data_dir at a folder containing "
           f"{_CIFAR_PICKLE_DIR}/ (the python pickle files from "
           "https://www.cs.toronto.edu/~kriz/cifar.html)."))


# ---------------------------------------------------------------- CIFAR-10.1

# Recht et al. 2018, "Do CIFAR-10 classifiers generalize to CIFAR-10?": 2,021
# new test images (version v4, the one of the paper's main results) drawn as
# CIFAR-10's were; a second test set for networks trained on CIFAR-10. Its
# images are normalised with CIFAR-10's statistics.
CIFAR10_1_INFO = dataclasses.replace(CIFAR10_INFO, name="cifar10_1")
CIFAR10_1_TFDS_NAME = "cifar10_1/v4"


def _load_cifar10_1(split: str, data_dir: Optional[str]):
  if split != "test":
    raise ValueError(f"cifar10_1 has only a 'test' split, not {split!r}.")
  return load_tfds(CIFAR10_1_TFDS_NAME, split, data_dir, pretty_name="CIFAR-10.1")


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
  _check_split("digits", split)
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
  _check_split("synthetic", split)
  return make_synthetic(SYNTHETIC_SIZES[split], SYNTHETIC_INFO.image_shape,
                        SYNTHETIC_INFO.num_classes,
                        seed=SPLITS.index(split) + 1)


register_dataset("cifar10", _load_cifar10, CIFAR10_INFO)
register_dataset("cifar10_1", _load_cifar10_1, CIFAR10_1_INFO)
register_dataset("digits", load_digits, DIGITS_INFO)
register_dataset("synthetic", _load_synthetic, SYNTHETIC_INFO)
