"""Handing the host memory that compilation freed back to the operating system.

Compiling a search step on XLA:CPU allocates and frees gigabytes of small
objects (HLO, buffer assignment, LLVM modules). glibc's allocator keeps freed
heap memory in the process, so after the compile a process's resident memory
stays near the compiler's peak for the rest of the run (the DARTS weight step
at C=8, 5 cells, batch 16: 2.9-3.4 GB resident after compiling, 1.65 GB of it
still in use; see benchmarks/RESULTS.md, issue 17). That memory is not lost, glibc
reuses it, but to the operating system, to `top` and to an out-of-memory
killer it is the process's, and it is not available to other processes (a
second search, the data pipeline's workers).

`release()` asks glibc to return it (`malloc_trim(0)`, which also unmaps free
pages inside the heap). The run loops call it after the first step (the
compilation) and after the held-out evaluation's warm-up.

`drop_compiled()` frees what op-by-op work compiled before a run's first step:
Flax initialises a network by running it eagerly, and JAX keeps every small
program that compiles (one per operation and shape: ~200, ~300 MB at the
benchmark's small supernet) for the life of the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Callable, Optional, Tuple

import jax

_lock = threading.Lock()
_trim: Optional[Callable[[int], int]] = None
_looked_up = False


def _malloc_trim() -> Optional[Callable[[int], int]]:
  """glibc's `malloc_trim`, or None (macOS, musl, Windows: nothing to release this way)."""
  global _trim, _looked_up
  with _lock:
    if not _looked_up:
      _looked_up = True
      try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        _trim = fn
      except (OSError, AttributeError):
        _trim = None
    return _trim


def release() -> bool:
  """Returns freed heap memory to the operating system, where the C library can.

  Cheap (milliseconds to ~0.2 s after a large compile) and safe to call from
  any thread at any time: it only gives back pages no allocation holds.

  Returns:
    True if glibc's `malloc_trim` ran (whether or not it found memory to
    return); False where the C library has none (not glibc), a no-op.
  """
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def status_mb(key: str) -> Optional[float]:
  """A memory field of Linux's `/proc/self/status` in MB (e.g. 'VmRSS', 'VmHWM'), or None."""
  try:
    with open("/proc/self/status") as fh:
      for line in fh:
        if line.startswith(key + ":"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def resident_mb() -> Optional[float]:
  """The process's resident memory in MB (VmRSS), or None where /proc has none."""
  return status_mb("VmRSS")


def drop_compiled() -> Optional[Tuple[float, float]]:
  """Drops every program JAX holds compiled in memory, then `release()`s.

  For a run about to compile its step: the programs that the eager
  initialisation compiled are not needed again (the supernet's, ~300 MB at
  C=8, 5 cells; benchmarks/RESULTS.md). Any jitted function compiles again at
  its next call (from the persistent compilation cache, when one is set), so
  call it before the programs a run keeps are compiled, not between their calls.

  Returns:
    The resident MB (before, after), or None where either is unknown.
  """
  before = resident_mb()
  jax.clear_caches()
  release()
  after = resident_mb()
  return None if before is None or after is None else (before, after)


def release_measured() -> Optional[Tuple[float, float]]:
  """`release()`, and the resident MB (before, after) for a log line; None if either is unknown."""
  before = resident_mb()
  if not release() or before is None:
    return None
  return before, resident_mb()
