"""The other two NAS-Bench-201 datasets: CIFAR-100 and ImageNet16-120.

* 'cifar100': the python pickle files of https://www.cs.toronto.edu/~kriz/cifar.html
  (`cifar-100-python/train`, `test`: {b'data': uint8 (n, 3072) CHW,
  b'fine_labels': n ints in [0, 100)}; the 100 fine classes are the labels),
  else tfds `cifar100` (prepared with `tfds build cifar100
  --file_format=array_record`).
* 'imagenet16_120': the downsampled ImageNet of Chrabaszcz et al. 2017 at
  16x16 (`Imagenet16_train.tar.gz` / `Imagenet16_val.tar.gz` of
  image-net.org, extracted into one folder named by `data.data_dir`):
  `train_data_batch_1` .. `train_data_batch_10` and `val_data`, each a
  pickle of {'data': uint8 (n, 768) CHW, 'labels': n ints in [1, 1000]}. As
  NAS-Bench-201 (AutoDL-Projects `ImageNet16(use_num_of_class_only=120)`),
  only labels 1..120 are kept and shifted to 0..119. Split 'train' is the
  train batches, 'test' the whole `val_data` (NB201 halves it into its
  valid and test sets of 3,000 images each).

Normalisation and augmentation are NAS-Bench-201's (AutoDL-Projects
`get_dataset_with_transform.py`: CIFAR-100 mean/std of the pixel values,
crop padding 4; ImageNet16 crop padding 2; both flipped).

Importing this module registers 'cifar100' and 'imagenet16_120'.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional, Sequence

import numpy as np

from jdarts.data import sources
from jdarts.data import tfds_source
from jdarts.data.errors import DataError
from jdarts.data.errors import DatasetNotFoundError
from jdarts.data.errors import describe_cause

CIFAR100_INFO = sources.DatasetInfo(
    name="cifar100", image_shape=(32, 32, 3), num_classes=100,
    mean=tuple(x / 255 for x in (129.3, 124.1, 112.4)),
    std=tuple(x / 255 for x in (68.2, 65.4, 70.4)), crop_padding=4, flip=True)
IMAGENET16_120_INFO = sources.DatasetInfo(
    name="imagenet16_120", image_shape=(16, 16, 3), num_classes=120,
    mean=tuple(x / 255 for x in (122.68, 116.66, 104.01)),
    std=tuple(x / 255 for x in (63.22, 61.26, 65.09)), crop_padding=2, flip=True)

_CIFAR100_DIR = "cifar-100-python"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGENET16_FILES = {"train": tuple(f"train_data_batch_{i}" for i in range(1, 11)),
                    "test": ("val_data",)}
IMAGENET16_CLASSES = 120


def _read_pickle(path: str, what: str, fix: str):
  try:
    with open(path, "rb") as f:
      d = pickle.load(f, encoding="bytes")
  except OSError as e:
    raise DataError(f"{what} file {path} cannot be read ({describe_cause(e)}); {fix}.") from e
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{what} file {path} is not a readable pickle ({describe_cause(e)}); "
                    f"{fix}.") from e
  if not isinstance(d, dict):
    raise DataError(f"{what} file {path} holds a {type(d).__name__}, not a dict; {fix}.")
  return d


def _arrays(d, path: str, what: str, label_key: str, side: int, fix: str):
  """(images uint8 (n, side, side, 3) HWC, labels int64 (n,)) of one pickle dict."""
  data = d.get(b"data", d.get("data"))
  labels = d.get(label_key.encode(), d.get(label_key))
  if data is None or labels is None:
    keys = ", ".join(sorted(repr(k) for k in d)) or "none"
    raise DataError(f"{what} file {path} lacks 'data' or {label_key!r} (it has {keys}); "
                    f"{fix}.")
  data, labels = np.asarray(data), np.asarray(labels)
  row = 3 * side * side
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
    raise DataError(f"{what} file {path}: data is {data.dtype} {data.shape}, not uint8 "
                    f"(n, {row}); {fix}.")
  if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
    raise DataError(f"{what} file {path}: {labels.shape[0] if labels.ndim else 0} labels "
                    f"({labels.dtype}) for {data.shape[0]} images; {fix}.")
  return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _missing(folder: str, names: Sequence[str]):
  return [n for n in names if not os.path.isfile(os.path.join(folder, n))]


def load_cifar100_pickle(folder: str, split: str) -> sources.ArraySource:
  """CIFAR-100 `split` ('train' | 'test') from `folder`/{train,test} with fine labels."""
  sources.check_split("cifar100", split)
  fix = f"re-download cifar-100-python.tar.gz from {_CIFAR_URL} and extract it again"
  path = os.path.join(folder, split)
  if not os.path.isfile(path):
    raise DatasetNotFoundError(f"CIFAR-100 folder {folder} lacks {split}; {fix}.")
  images, labels = _arrays(_read_pickle(path, "CIFAR-100", fix), path, "CIFAR-100",
                           "fine_labels", 32, fix)
  if labels.size and (labels.min() < 0 or labels.max() >= 100):
    raise DataError(f"CIFAR-100 file {path} has labels in [{labels.min()}, {labels.max()}], "
                    f"outside [0, 100); {fix}.")
  return sources.ArraySource(np.ascontiguousarray(images), labels.astype(np.int32))


def _load_cifar100(split: str, data_dir: Optional[str]):
  if data_dir:
    for folder in (os.path.join(data_dir, _CIFAR100_DIR), data_dir):
      if os.path.isfile(os.path.join(folder, "train")) or os.path.isfile(
          os.path.join(folder, "test")):
        return load_cifar100_pickle(folder, split)
  return tfds_source.load_tfds(
      "cifar100", split, data_dir, pretty_name="CIFAR-100",
      fix=(", or point --config.data.data_dir at a folder containing "
           f"{_CIFAR100_DIR}/ (the python pickle files from {_CIFAR_URL})."))


def load_imagenet16(folder: Optional[str], split: str,
                    num_classes: int = IMAGENET16_CLASSES) -> sources.ArraySource:
  """ImageNet16 `split` from `folder`, classes 1..num_classes kept as 0..num_classes-1.

  Raises:
    DatasetNotFoundError: a file of the split is missing (one line naming them all).
    DataError: a file is not such a pickle, or a label is outside [1, 1000].
  """
  sources.check_split("imagenet16_120", split)
  names = IMAGENET16_FILES[split]
  fix = ("download Imagenet16_train.tar.gz and Imagenet16_val.tar.gz (downsampled "
         "ImageNet 16x16, image-net.org) and extract both into one folder, "
         "--config.data.data_dir")
  missing = _missing(folder, names) if folder else list(names)
  if missing:
    raise DatasetNotFoundError(
        f"ImageNet16-120 folder {folder or '(data.data_dir not set)'} lacks "
        f"{', '.join(missing)} of the {split} split (it needs {', '.join(names)}); {fix}.")
  images, labels = [], []
  for name in names:
    path = os.path.join(folder, name)
    x, y = _arrays(_read_pickle(path, "ImageNet16", fix), path, "ImageNet16", "labels", 16,
                   fix)
    if y.size and (y.min() < 1 or y.max() > 1000):
      raise DataError(f"ImageNet16 file {path} has labels in [{y.min()}, {y.max()}], "
                      f"outside [1, 1000] (1-based); {fix}.")
    keep = y <= num_classes
    images.append(x[keep])
    labels.append(y[keep] - 1)
  return sources.ArraySource(np.ascontiguousarray(np.concatenate(images)),
                             np.concatenate(labels).astype(np.int32))


def _load_imagenet16_120(split: str, data_dir: Optional[str]):
  return load_imagenet16(data_dir, split)


sources.register_dataset("cifar100", _load_cifar100, CIFAR100_INFO)
sources.register_dataset("imagenet16_120", _load_imagenet16_120, IMAGENET16_120_INFO)
