"""CIFAR-10 (python pickle files or tfds) and CIFAR-10.1 (tfds) sources.

CIFAR-10 is read from the python pickle files of
https://www.cs.toronto.edu/~kriz/cifar.html (`cifar-10-batches-py/`) when
`data_dir` holds them, else from a prepared tfds dataset. Each pickle file is
checked as it is read (a dict with `data`, uint8 (n, 3072), and `labels`, n
ints in [0, 10)); a file that fails raises a one-line `DataError` naming it.

Importing this module registers 'cifar10' and 'cifar10_1'.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Dict, Optional

import numpy as np

from jdarts.data import sources
from jdarts.data import tfds_source
from jdarts.data.errors import DataError
from jdarts.data.errors import DatasetNotFoundError
from jdarts.data.errors import describe_cause

CIFAR10_INFO = sources.DatasetInfo(
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
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR_ROW = 3 * 32 * 32  # a CHW image, flattened
_REDOWNLOAD = (f"re-download cifar-10-python.tar.gz from {_CIFAR_URL} and "
               "extract it again")


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


def _field(batch: Dict[Any, Any], key: str):
  # The original files (pickled by Python 2) have bytes keys; a file pickled
  # by Python 3 has str keys. Either holds the same data.
  return batch.get(key.encode(), batch.get(key))


def read_cifar10_batch(path: str):
  """Reads and checks one CIFAR-10 pickle file.

  Args:
    path: a `data_batch_i` or `test_batch` file: a pickle of {b'data': uint8
      (n, 3072) in CHW order, b'labels': list of n ints in [0, 10)}.

  Returns:
    (images uint8 (n, 32, 32, 3) in HWC order, labels int32 (n,)).

  Raises:
    DataError: the file is not such a pickle (unreadable, truncated, other
      keys, shapes, dtypes or labels); one line naming the file.
  """
  def bad(problem: str) -> DataError:
    return DataError(f"CIFAR-10 file {path}: {problem}; {_REDOWNLOAD}.")

  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
  except OSError as e:
    raise bad(f"cannot be read ({describe_cause(e)})") from e
  except Exception as e:  # pylint: disable=broad-except
    # EOFError or UnpicklingError, or whatever a garbled stream makes pickle
    # or numpy raise (ValueError, TypeError, AttributeError, ...).
    if isinstance(e, EOFError) or "truncated" in str(e):
      raise bad("is truncated (the pickle ends early)") from e
    raise bad(f"is not a readable CIFAR-10 pickle ({describe_cause(e)})") from e
  if not isinstance(batch, dict):
    raise bad(f"holds a {type(batch).__name__}, not the dict of a CIFAR-10 "
              "batch")
  data, labels = _field(batch, "data"), _field(batch, "labels")
  if data is None or labels is None:
    lacks = " and ".join(repr(k.encode()) for k, v in
                         (("data", data), ("labels", labels)) if v is None)
    keys = ", ".join(sorted(repr(k) for k in batch)) or "none"
    raise bad(f"lacks {lacks} (it has {keys})")
  try:
    data, labels = np.asarray(data), np.asarray(labels)
  except ValueError as e:  # ragged lists
    raise bad(f"has ragged data or labels ({describe_cause(e)})") from e
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
    raise bad(f"data is {data.dtype} {data.shape}, not uint8 (n, {_CIFAR_ROW})"
              " (n images of 3x32x32 pixels)")
  n = data.shape[0]
  if n == 0:
    raise bad("holds 0 images")
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    raise bad(f"labels are {labels.dtype} {labels.shape}, not a list of ints")
  if len(labels) != n:
    raise bad(f"has {len(labels)} labels for {n} images")
  num_classes = CIFAR10_INFO.num_classes
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= num_classes:
    raise bad(f"has labels in [{lo}, {hi}], outside [0, {num_classes})")
  images = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int32)


def load_cifar10_pickle(batches_dir: str, split: str) -> sources.ArraySource:
  """Reads a split of CIFAR-10 from the python pickle files.

  Args:
    batches_dir: the `cifar-10-batches-py` folder (data_batch_1..5,
      test_batch; each a pickle of {b'data': uint8 (n, 3072) in CHW order,
      b'labels': list of n ints}).
    split: 'train' or 'test'.

  Returns:
    An `ArraySource` with images uint8 (N, 32, 32, 3) (HWC) and labels (N,).

  Raises:
    DatasetNotFoundError: some file of the split is missing (all are named).
    DataError: a file is corrupt or malformed (see `read_cifar10_batch`).
  """
  sources.check_split("cifar10", split)
  names = _CIFAR_PICKLE_FILES[split]
  missing = [f for f in names
             if not os.path.isfile(os.path.join(batches_dir, f))]
  if missing:
    raise DatasetNotFoundError(
        f"CIFAR-10 folder {batches_dir} lacks {', '.join(missing)} of the "
        f"{split} split (it needs {', '.join(names)}); {_REDOWNLOAD}.")
  images, labels = [], []
  for fname in names:
    x, y = read_cifar10_batch(os.path.join(batches_dir, fname))
    images.append(x)
    labels.append(y)
  # Contiguous HWC so that batch gathers copy whole images.
  return sources.ArraySource(np.ascontiguousarray(np.concatenate(images)),
                             np.concatenate(labels))


def _load_cifar10(split: str, data_dir: Optional[str]):
  batches_dir = find_cifar10_pickle_dir(data_dir)
  if batches_dir is not None:
    return load_cifar10_pickle(batches_dir, split)
  return tfds_source.load_tfds(
      "cifar10", split, data_dir, pretty_name="CIFAR-10",
      fix=(", or point --config.data.data_dir at a folder containing "
           f"{_CIFAR_PICKLE_DIR}/ (the python pickle files from "
           f"{_CIFAR_URL})."))


# Recht et al. 2018, "Do CIFAR-10 classifiers generalize to CIFAR-10?": 2,021
# new test images (version v4, the one of the paper's main results) drawn as
# CIFAR-10's were; a second test set for networks trained on CIFAR-10. Its
# images are normalised with CIFAR-10's statistics.
CIFAR10_1_INFO = dataclasses.replace(CIFAR10_INFO, name="cifar10_1")
CIFAR10_1_TFDS_NAME = "cifar10_1/v4"


def _load_cifar10_1(split: str, data_dir: Optional[str]):
  if split != "test":
    raise DataError(f"cifar10_1 has only a 'test' split, not {split!r}; "
                    "use split 'test'.")
  return tfds_source.load_tfds(CIFAR10_1_TFDS_NAME, split, data_dir,
                               pretty_name="CIFAR-10.1")


sources.register_dataset("cifar10", _load_cifar10, CIFAR10_INFO)
sources.register_dataset("cifar10_1", _load_cifar10_1, CIFAR10_1_INFO)
