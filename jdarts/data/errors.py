"""The errors of `jdarts.data`: what a user sees when data is missing or bad.

Both carry a one-line message that names the file (or the dataset and split),
says what is wrong with it and what would fix it, so that a command-line
front end can print `str(error)` instead of a traceback:

* `DatasetNotFoundError` (a `FileNotFoundError`): the data is not on disk.
* `DataError` (a `ValueError`): the data is there but unusable: a corrupt
  or truncated file, arrays of the wrong shape or dtype, labels out of range,
  a split too small for what was asked of it.
"""
from __future__ import annotations

import re

# Longest piece of a wrapped library message quoted in ours: enough to name
# the failure, short enough to stay one readable line.
_MAX_CAUSE_CHARS = 200


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not on disk; the message says how to get it."""


class DataError(ValueError):
  """Data on disk (or from a loader) is unusable; the message is one line.

  The message names the file, or the dataset and split, what is wrong, and
  what would fix it.
  """

  def __init__(self, message: str):
    super().__init__(one_line(message))


def one_line(text: str) -> str:
  """Collapses all whitespace (newlines included) of `text` to single spaces."""
  return " ".join(str(text).split())


def describe_cause(error: BaseException) -> str:
  """A short one-line rendering of a library's exception, for our messages.

  Args:
    error: the exception raised by numpy, pickle, tfds, array_record, PIL...

  Returns:
    `'TypeName: message'`, whitespace collapsed and cut to a bounded length.
  """
  # Object reprs (PIL names its BytesIO) carry addresses that differ per run.
  text = re.sub(r" at 0x[0-9a-fA-F]+", "", one_line(str(error)))
  if len(text) > _MAX_CAUSE_CHARS:
    text = text[:_MAX_CAUSE_CHARS - 3] + "..."
  name = type(error).__name__
  return f"{name}: {text}" if text else name
