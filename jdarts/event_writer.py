"""TensorBoard event files written without TensorFlow, beside `metrics.jsonl`.

`Run` (jdarts.runs) writes every metrics row through one writer; on process 0
that is a `MultiWriter` of the JSON-lines writer and a `TensorBoardWriter`, so
both files hold the same rows:

* every numeric scalar of a row of kind K becomes the scalar `K/<name>` at
  the row's step (e.g. 'train/train_loss', 'arch/alpha_entropy/normal');
* `text(step, tag, text)` (the genotype at each epoch) becomes a text summary
  that TensorBoard's Text tab shows.

Open them with `tensorboard --logdir WORKDIR` (the files are in WORKDIR/tb).
The `tensorboard` package (a dependency in setup.py) provides the pure-Python
event-file writer and the protocol buffers; it is imported only when a run
opens its writer, so `import jdarts` stays light. Without it the run logs a
warning and writes metrics.jsonl alone.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

log = logging.getLogger("jdarts")


class TensorBoardWriter:
  """Writes rows as TensorBoard scalars and texts into `logdir` (an events file)."""

  def __init__(self, logdir: str):
    # Optional at import time: see the module docstring.
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.text import metadata as text_metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._text_meta = text_metadata.create_summary_metadata(display_name=None,
                                                            description=None)
    self._make_tensor = tensor_util.make_tensor_proto
    os.makedirs(logdir, exist_ok=True)
    self._file = EventFileWriter(logdir, flush_secs=10)

  def _add(self, step: int, values) -> None:
    summary = self._summary_pb2.Summary(value=values)
    self._file.add_event(self._event_pb2.Event(step=int(step), summary=summary,
                                               wall_time=time.time()))

  def write(self, step: int, kind: str, values: Dict[str, Any]) -> None:
    """Every numeric scalar of `values` as scalar `kind/name`."""
    vals = [self._summary_pb2.Summary.Value(tag=f"{kind}/{k}", simple_value=float(v))
            for k, v in values.items() if _is_scalar(v)]
    if vals:
      self._add(step, vals)

  def text(self, step: int, tag: str, text: str) -> None:
    """A text summary (Markdown) named `tag` at `step`."""
    tensor = self._make_tensor(np.array(text, dtype=object))
    self._add(step, [self._summary_pb2.Summary.Value(tag=tag, metadata=self._text_meta,
                                                     tensor=tensor)])

  def resumed(self, step: int) -> None:
    """Marks a restart from the checkpoint of `step`: TensorBoard drops what an
    earlier run logged after it.

    A run killed after its last checkpoint has logged steps its resumed run
    logs again, into a new events file. A SessionLog START event at step + 1
    makes TensorBoard's reader purge every older event at or after that step,
    for every tag (its own out-of-order check only catches tags logged again).
    """
    self._file.add_event(self._event_pb2.Event(
        step=int(step) + 1, wall_time=time.time(),
        session_log=self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _is_scalar(v) -> bool:
  if isinstance(v, (bool, str)) or v is None:
    return False
  try:
    return np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)
  except TypeError:
    return False


class MultiWriter:
  """Sends each row (and text) to several writers; a writer without `text` skips texts."""

  def __init__(self, writers: Sequence[Any]):
    self.writers = list(writers)

  def write(self, step: int, kind: str, values: Dict[str, Any]) -> None:
    for w in self.writers:
      w.write(step, kind, values)

  def text(self, step: int, tag: str, text: str) -> None:
    for w in self.writers:
      if hasattr(w, "text"):
        w.text(step, tag, text)

  def resumed(self, step: int) -> None:
    """Tells the writers that can use it that the run restarts after `step`."""
    for w in self.writers:
      if hasattr(w, "resumed"):
        w.resumed(step)

  def flush(self) -> None:
    for w in self.writers:
      if hasattr(w, "flush"):
        w.flush()

  def close(self) -> None:
    for w in self.writers:
      if hasattr(w, "close"):
        w.close()


def open_tensorboard(workdir: str) -> Optional[TensorBoardWriter]:
  """A writer into `workdir/tb`, or None (with a warning) when `tensorboard` is missing."""
  try:
    return TensorBoardWriter(os.path.join(workdir, "tb"))
  except ImportError:
    log.warning("the tensorboard package is not installed (pip install tensorboard); "
                "writing metrics.jsonl only")
    return None
