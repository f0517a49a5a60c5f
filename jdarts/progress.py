"""Progress output that scales: a tqdm bar on a terminal, plain periodic lines elsewhere.

`progress_bar` is what `jdarts.runs.Run.steps` shows; in CI and cluster logs
(standard output not a TTY) a carriage-return bar would make the log file one
enormous line, so `LineProgress` prints whole lines instead.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional


class LineProgress:
  """Plain periodic progress lines for logs that are not a terminal (CI, clusters).

  Speaks the part of tqdm's interface the loops use (update, set_postfix,
  write, close) and prints a whole line, no carriage return, at most every
  `every_s` seconds and at the last step, so a cluster log grows by a line a
  minute instead of one redrawn bar per step.
  """

  def __init__(self, total: int, initial: int, desc: str, every_s: float = 30.0,
               stream=None):
    self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
    self.stream = stream if stream is not None else sys.stdout
    self.postfix: Dict[str, Any] = {}
    self.t_last = time.time()
    self.n0 = initial

  def update(self, n: int = 1) -> None:
    self.n += n
    now = time.time()
    if now - self.t_last >= self.every_s or self.n >= self.total:
      # The rate since the last line: the first step's compilation would
      # otherwise weigh on every later line.
      rate = (self.n - self.n0) / max(now - self.t_last, 1e-9)
      self.t_last, self.n0 = now, self.n
      post = "".join(f" {k}={v}" for k, v in self.postfix.items())
      self.write(f"{self.desc}: step {self.n}/{self.total} "
                 f"({100 * self.n / max(self.total, 1):.0f}%, {rate:.2f} step/s){post}")

  def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, refresh: bool = True,
                  **kwargs: Any) -> None:
    """tqdm's signature: a dict, keyword values, or both (the loops use either)."""
    del refresh
    self.postfix = {**(ordered_dict or {}), **kwargs}

  def write(self, msg: str) -> None:
    self.stream.write(msg + "\n")
    self.stream.flush()

  def close(self) -> None:
    pass


def progress_bar(total: int, initial: int, enabled: bool, desc: str, stream=None):
  """A tqdm bar on a terminal, `LineProgress` otherwise, or None when disabled.

  Not a TTY (a redirected or captured stdout): plain periodic lines, since a
  carriage-return bar turns a log file into one huge line.
  """
  if not enabled:
    return None
  stream = stream if stream is not None else sys.stdout
  if not (hasattr(stream, "isatty") and stream.isatty()):
    return LineProgress(total, initial, desc, stream=stream)
  try:
    from tqdm import auto as tqdm
  except ImportError:  # tqdm is a dependency, but keep the loop usable without it
    return None
  return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                   desc=desc)
