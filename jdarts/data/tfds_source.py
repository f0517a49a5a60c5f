"""Prepared tensorflow-datasets splits as random-access sources, no TensorFlow.

`load_tfds` opens a split with `tfds.data_source` (array_record files) and
returns a `TfdsSource`, which yields plain `{'image', 'label'}` records. Every
failure becomes one of `jdarts.data.errors`: a dataset that is not prepared
(or prepared in a format `tfds.data_source` cannot read) is a
`DatasetNotFoundError` that says how to prepare it; a prepared dataset that
cannot be opened or read (corrupt or missing record files, an empty split) is
a `DataError` naming the folder or the record file.

tensorflow_datasets is imported only when a split is opened.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from jdarts.data.errors import DataError
from jdarts.data.errors import DatasetNotFoundError
from jdarts.data.errors import describe_cause

logger = logging.getLogger(__name__)


class TfdsSource:
  """Adapts a `tfds.data_source` to plain `{'image', 'label'}` records.

  A record that cannot be read or decoded raises `DataError` naming its
  record file (not array_record's or PIL's bare message).

  Attributes:
    data_source: the wrapped `tfds.data_source`.
    location: the prepared dataset's folder, for messages.
    origin: where the records come from, for messages (`load_source` sets
      it to name the dataset and split as well).
  """

  def __init__(self, data_source, *, rebuild: str = ""):
    """Wraps `data_source`; `rebuild` is the advice appended to read errors."""
    self.data_source = data_source
    self._batched_reads = hasattr(data_source, "__getitems__")
    self._rebuild = rebuild
    self._files = _record_files(data_source)
    info = getattr(data_source, "dataset_info", None)
    self.location = str(getattr(info, "data_dir", "") or "a tfds data source")
    self.origin = self.location

  def __len__(self) -> int:
    return len(self.data_source)

  @staticmethod
  def _record(example) -> Dict[str, Any]:
    return {"image": np.asarray(example["image"]),
            "label": int(example["label"])}

  def record_file(self, index: int) -> str:
    """The record file holding record `index` (the folder if unknown)."""
    for filename, start, stop in self._files:
      if start <= index < stop:
        return filename
    return self.location

  def _read_error(self, index: int, error: Exception) -> DataError:
    fix = self._rebuild or "rebuild the prepared dataset"
    return DataError(
        f"{self.record_file(index)}: cannot read record {index} "
        f"({describe_cause(error)}); the prepared files are corrupt or "
        f"incomplete: {fix}")

  def __getitem__(self, index: int) -> Dict[str, Any]:
    index = int(index)
    try:
      return self._record(self.data_source[index])
    except IndexError:
      raise
    except Exception as e:  # array_record, protobuf, PIL, numpy: all bad data
      raise self._read_error(index, e) from e

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
      except Exception:  # pylint: disable=broad-except
        # A bad record somewhere in the batch: the one-by-one reads below
        # find it and name its file.
        pass
    return [self[k] for k in keys]

  def __repr__(self) -> str:
    return f"TfdsSource(n={len(self)}, location={self.location!r})"


def _record_files(data_source) -> List[Tuple[str, int, int]]:
  """[(filename, first record, end)] of a tfds data source; [] if unknown."""
  try:
    info, split = data_source.dataset_info, data_source.split
    instructions = info.splits[split].file_instructions
  except Exception:  # pylint: disable=broad-except
    return []  # mocks and other sources: messages name the folder instead
  files, start = [], 0
  for fi in instructions:
    files.append((os.fspath(fi.filename), start, start + int(fi.take)))
    start += int(fi.take)
  return files


def tfds_default_data_dir() -> str:
  """tfds's default data_dir (TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_datasets.core import constants
  return os.path.expanduser(constants.DATA_DIR)


def _tfds_prepared_formats(data_dir: str, tfds_name: str):
  """Scans `data_dir/tfds_name/*/dataset_info.json` of prepared versions.

  Returns:
    (readable, formats): whether some version has array_record files (which
    `tfds.data_source` reads), and the file formats of the versions that don't.
  """
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


def _split_num_examples(tfds, tfds_name: str, split: str,
                        data_dir: Optional[str]) -> Optional[int]:
  """Examples in `split` of a prepared dataset per its metadata, or None."""
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    return int(builder.info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except
    return None  # only used to refine a message: unknown is fine


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
    DatasetNotFoundError: not prepared; one line naming the folder and the fix.
    DataError: prepared but unreadable (corrupt metadata or record files, an
      empty or unknown split); one line naming the folder and the problem.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = data_dir or tfds_default_data_dir()
  build = (f"`tfds build {tfds_name} --data_dir={where} "
           "--file_format=array_record` (needs tensorflow)")
  try:
    # download=False: never start a download or a TensorFlow-based build from
    # inside a training run; say how to prepare the data instead.
    ds = tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                          download=False)
  except Exception as e:  # pylint: disable=broad-except
    readable, formats = _tfds_prepared_formats(where, tfds_name)
    missing = isinstance(e, (tfds.core.DatasetNotFoundError,
                             NotImplementedError, KeyError, FileNotFoundError,
                             AssertionError))
    if missing and not readable:
      # tfds reports a missing dataset as "random access ...
      # FileFormat.TFRECORD is not supported" (NotImplementedError) for an
      # existing data_dir and as "`splits` is empty" (KeyError) for a missing
      # one; both mislead.
      logger.debug("tfds.data_source(%r) failed: %s", tfds_name, e)
      if formats:
        msg = (f"{pretty_name} under {where} is prepared as "
               f"{'/'.join(sorted(formats))}, which tfds.data_source cannot "
               f"read. Rebuild it with {build}{fix}")
      else:
        msg = (f"{pretty_name} not found under {where}. "
               f"Prepare it with {build}{fix}")
      raise DatasetNotFoundError(msg) from None
    # The data is there (or its metadata is unreadable): a bad split name,
    # corrupt metadata, or a split that selects no records.
    if _split_num_examples(tfds, tfds_name, split, data_dir) == 0:
      raise DataError(
          f"{pretty_name} under {where}: split {split!r} has 0 examples; "
          "choose a non-empty split or rebuild the dataset with "
          f"{build}.") from e
    raise DataError(
        f"{pretty_name} under {where}: tfds cannot open split {split!r} "
        f"({describe_cause(e)}); check the split name, or rebuild the "
        f"dataset with {build}.") from e
  return TfdsSource(ds, rebuild=f"rebuild the dataset with {build}.")
