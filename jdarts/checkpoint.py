"""Checkpoints of the search state for exact resume, and a preemption flag.

`Checkpointer` keeps the last K checkpoints of a run under one directory
(e.g. `workdir/checkpoints`), one sub-directory per step, written with
orbax-checkpoint's `CheckpointManager` as a composite of two items:

* `state`: any pytree of arrays (the `SearchState`), via `StandardSave`;
* `extra`: a small JSON dict (data-iterator states, epoch, ...), via `JsonSave`.

Atomicity. Orbax (0.12, POSIX file systems: `AtomicRenameTemporaryPath`)
writes a step into `<dir>/<step>.orbax-checkpoint-tmp/`, writes
`commit_success.txt` there once every item is complete, and then renames the
directory to `<dir>/<step>`. Only directories whose name is a plain step
number are listed as checkpoints, so a crash before the rename leaves a
`*.orbax-checkpoint-tmp` directory that is never restored; it is deleted when
the next `Checkpointer` opens the directory (`cleanup_tmp_directories`), or
when that step is saved again. An OSError while writing (a full disk) is
`CheckpointWriteError`, naming the intact step a rerun resumes from.

Corruption. A finalized step can still be damaged later (a full disk,
a copy that stopped half-way, bit rot). `restore_latest` detects this when
orbax fails to read it (missing or truncated files: orbax/TensorStore raise)
or when the restored leaves do not match the CRC-32 per leaf that `save`
records in the step's metadata (TensorStore does not checksum array chunks, so
a flipped bit in the data would otherwise restore silently). It then logs a
warning, falls back to the newest older step that restores cleanly, and moves
the bad step directories aside to `<dir>/<step>.corrupt-<time>` (kept for
inspection, ignored by orbax), so that the resumed run can save those steps
again.

Typed PRNG keys (`jax.random.key`) are written by orbax as their key data
(uint32, e.g. shape (2,) for threefry) and restored as keys of the template's
implementation; raw `PRNGKey` arrays are plain uint32 arrays.

A checkpoint whose tree structure, shapes or dtypes differ from the template
(another model or config in the same workdir) raises
`CheckpointMismatchError` before anything is read; orbax itself would
silently cast different dtypes.

Multi-host: orbax coordinates the processes itself (the primary process
creates, renames and deletes directories, every process writes its shards);
every process must call `save`, `restore_latest`, `wait` and `close`, with
the same arguments. Leaf checksums cover only arrays that are fully
addressable by the calling process.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

PyTree = Any

# Key of the per-leaf checksums in the step's orbax custom metadata.
_CHECKSUM_KEY = "jdarts_leaf_crc32"
_MAX_LISTED = 3  # differences named in one error message


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk does not fit the state it is restored into."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. disk full); the previous one is intact."""


class CheckpointCorruptError(RuntimeError):
  """None of the checkpoints in a directory could be restored."""


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):  # DictKey / GetAttrKey / SequenceKey
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _flat(tree, is_leaf=None) -> Dict[str, Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {_path_str(p): x for p, x in leaves}


def _is_key_array(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def leaf_checksums(tree: PyTree) -> Dict[str, Optional[int]]:
  """CRC-32 of every leaf's bytes, keyed by its path.

  Args:
    tree: a pytree of arrays (typed PRNG keys are hashed by their key data).

  Returns:
    {'params/conv/kernel': crc, ...}; None for arrays that this process does
    not hold completely (sharded across hosts).
  """
  flat = _flat(tree)
  local = {k: (jax.random.key_data(x) if _is_key_array(x) else x) for k, x in flat.items()
           if not (isinstance(x, jax.Array) and not x.is_fully_addressable)}
  local = jax.device_get(local)  # one batched transfer instead of one per leaf
  out = {}
  for k in flat:
    if k not in local:
      out[k] = None
      continue
    a = np.ascontiguousarray(np.asarray(local[k]))
    # uint8 view: the buffer protocol rejects some dtypes (bfloat16) and 0-d views.
    out[k] = zlib.crc32(a.reshape(-1).view(np.uint8))
  return out


def _describe_mismatch(template: PyTree, meta_tree: PyTree) -> List[str]:
  """Differences between a template and orbax's metadata tree of a checkpoint."""
  # Orbax writes a typed PRNG key as its key data (e.g. threefry: uint32
  # (..., 2)) and records that shape and dtype; compare like with like.
  want = {k: (jax.eval_shape(jax.random.key_data, x) if _is_key_array(x) else x)
          for k, x in _flat(template).items()}
  # Orbax stores dataclasses and namedtuples as dicts of their fields and
  # tuples as lists, so both sides flatten to the same path strings.
  have = _flat(meta_tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
  diffs = [f"{k} is missing from the checkpoint" for k in want if k not in have]
  diffs += [f"the checkpoint has {k}, the template does not" for k in have if k not in want]
  for k in want.keys() & have.keys():
    w, h = want[k], have[k]
    if not (hasattr(w, "shape") and hasattr(h, "shape")):
      continue
    if tuple(w.shape) != tuple(h.shape):
      diffs.append(f"{k} has shape {tuple(h.shape)} there, {tuple(w.shape)} here")
    elif hasattr(w, "dtype") and str(w.dtype) != str(h.dtype):
      diffs.append(f"{k} has dtype {h.dtype} there, {w.dtype} here")
  return sorted(diffs)


class _CorruptStep(Exception):
  """A step that cannot be restored; internal to `restore_latest`."""


class Checkpointer:
  """Saves and restores (state, extra) at integer steps; keeps the last K.

  Use one instance per run directory and close it (or use it as a context
  manager) so that pending writes and deletions finish.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every_steps: int = 0,
               async_save: bool = False):
    """Opens (and creates) a checkpoint directory.

    Args:
      directory: where the step directories live, e.g. `workdir/checkpoints`.
      max_to_keep: number of most recent checkpoints kept; older ones are
        deleted after each save. At least 1.
      save_every_steps: `save` writes when `step % save_every_steps == 0`;
        0 writes only when `save(..., force=True)`.
      async_save: if True, `save` returns once the arrays are copied to host
        memory and writes in a background thread (call `wait` before relying
        on the files); if False (default), `save` returns after the
        checkpoint is committed.
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
    if save_every_steps < 0:
      raise ValueError(f"save_every_steps must be >= 0, got {save_every_steps}.")
    directory = os.fspath(directory)
    # Cloud paths (gs://bucket/run, the usual workdir of a TPU pod) stay as
    # they are; abspath would turn them into a local "<cwd>/gs:/bucket/run".
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self.save_every_steps = save_every_steps
    self.async_save = async_save
    self._barriers = 0  # barrier names must be unique within a run
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True)
    # Explicit handlers, so that a fresh process can read metadata before
    # its first save or restore.
    self._mgr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "extra": ocp.JsonCheckpointHandler()})

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def all_steps(self) -> List[int]:
    """The committed steps, ascending.

    Returns:
      Steps of finalized checkpoints (temporary directories excluded).
    """
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest committed step.

    Returns:
      The step, or None when the directory holds no checkpoint.
    """
    return self._mgr.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `step` is due under `save_every_steps`.

    Args:
      step: number of completed steps.

    Returns:
      True when `save_every_steps > 0` and `step` is a multiple of it.
    """
    return self.save_every_steps > 0 and step % self.save_every_steps == 0

  def save(self, step: int, state: PyTree, extra: Optional[Dict[str, Any]] = None, *,
           force: bool = False) -> bool:
    """Saves `state` and `extra` as step `step` if due.

    Args:
      step: number of completed steps; the checkpoint's name.
      state: a pytree of arrays, e.g. a `SearchState`.
      extra: a JSON-serialisable dict (iterator states, epoch, ...).
      force: save even when `step` is not a multiple of `save_every_steps`
        (end of run, preemption).

    Returns:
      True if a checkpoint was written (or, with `async_save`, started);
      False if the step was not due or is already saved.
    """
    if not (force or self.should_save(step)):
      return False
    if step in self._mgr.all_steps():
      # E.g. the end of an epoch and the end of the run at the same step.
      log.debug("checkpoint of step %d already exists; not saving again", step)
      return False
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
      raise TypeError(f"extra must be a dict, got {type(extra).__name__}.")
    try:
      json.dumps(extra)
    except (TypeError, ValueError) as e:
      # Fail here, with the cause, rather than inside orbax's writer thread.
      raise TypeError(f"extra must be JSON-serialisable: {e}") from e
    checksums = leaf_checksums(state)
    try:
      # force=True: whether to save is decided above, not by orbax's interval.
      saved = self._mgr.save(
          int(step), force=True,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  extra=ocp.args.JsonSave(extra)),
          custom_metadata={_CHECKSUM_KEY: checksums})
      if not self.async_save:
        self._mgr.wait_until_finished()
    except OSError as e:
      # The step was being written under a temporary name, so the committed
      # steps are untouched; say which one a rerun resumes from.
      prev = [s for s in self.all_steps() if s != step]
      where = (f"the checkpoint of step {prev[-1]} is intact and a rerun resumes from it"
               if prev else "no earlier checkpoint exists")
      err = CheckpointWriteError(
          f"could not write the checkpoint of step {step} in {self.directory} "
          f"({_first_line(e)}); {where}; free space (or fix the directory) and run the "
          "same command again.")
      err.errno = e.errno
      raise err from e
    return bool(saved)

  def _restore_step(self, step: int, template_state: PyTree):
    """Restores one step; `_CorruptStep` if unreadable, mismatch error if foreign."""
    try:
      meta = self._mgr.metadata(step)
      state_meta = meta.item_metadata["state"] if meta.item_metadata is not None else None
      tree = getattr(state_meta, "tree", None)
    except Exception as e:  # orbax raises many types for damaged files
      raise _CorruptStep(f"unreadable metadata ({type(e).__name__}: {_first_line(e)})")
    if tree is None:
      raise _CorruptStep("no metadata for the 'state' item")
    diffs = _describe_mismatch(template_state, tree)
    if diffs:
      more = f" (and {len(diffs) - _MAX_LISTED} more)" if len(diffs) > _MAX_LISTED else ""
      raise CheckpointMismatchError(
          f"{self.directory} holds a checkpoint (step {step}) of a different model or "
          f"config: {'; '.join(diffs[:_MAX_LISTED])}{more}. Resume with the config that "
          f"wrote it, or use a new --workdir, or delete {self.directory} to start over.")
    saved_sums = (meta.custom_metadata or {}).get(_CHECKSUM_KEY)
    if saved_sums is None:
      raise _CorruptStep("no leaf checksums in its _CHECKPOINT_METADATA")
    try:
      restored = self._mgr.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template_state),
                                        extra=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged files
      raise _CorruptStep(f"{type(e).__name__}: {_first_line(e)}")
    bad = [k for k, crc in leaf_checksums(restored.state).items()
           if crc is not None and saved_sums.get(k) is not None and saved_sums[k] != crc]
    if bad:
      raise _CorruptStep(f"checksum mismatch in {', '.join(sorted(bad)[:_MAX_LISTED])}"
                         + (f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED
                            else ""))
    extra = restored.extra
    if not isinstance(extra, dict):
      raise _CorruptStep(f"'extra' is a {type(extra).__name__}, not a dict")
    return restored.state, extra

  def restore_latest(self, template_state: PyTree
                     ) -> Optional[Tuple[PyTree, Dict[str, Any], int]]:
    """Restores the newest checkpoint that reads back intact.

    Args:
      template_state: a pytree with the structure, shapes, dtypes (and
        shardings) to restore into, e.g. a freshly initialised `SearchState`;
        its values are not used.

    Returns:
      (state, extra, step), with `state` of the template's pytree types
      (dataclasses, optax namedtuples) and bitwise equal to what was saved;
      None if the directory holds no checkpoint.

    Raises:
      CheckpointMismatchError: the checkpoint's structure, shapes or dtypes
        differ from `template_state`.
      CheckpointCorruptError: checkpoints exist but none can be restored.
    """
    self._mgr.wait_until_finished()
    self._mgr.reload()  # another process (an earlier run) may have written it
    steps = sorted(self._mgr.all_steps(), reverse=True)
    bad = []
    for step in steps:
      try:
        state, extra = self._restore_step(step, template_state)
      except _CorruptStep as e:
        log.warning("checkpoint step %d in %s is corrupt or incomplete: %s", step,
                    self.directory, e)
        bad.append(step)
        continue
      if bad:
        moved = self._quarantine(bad)
        log.warning("resuming from checkpoint step %d instead of the corrupt step(s) %s; "
                    "moved aside to %s", step, ", ".join(map(str, bad)), ", ".join(moved))
      return state, extra, step
    if bad:
      raise CheckpointCorruptError(
          f"none of the checkpoints in {self.directory} (steps "
          f"{', '.join(map(str, sorted(bad)))}) can be restored (see the warnings above); "
          f"delete {self.directory} to start over, or use a new --workdir.")
    return None

  def _quarantine(self, steps: Sequence[int]) -> List[str]:
    """Renames step directories to `<step>.corrupt-<time>`, so the steps can be re-saved.

    Only the primary process renames; with several processes, all wait at a
    barrier before listing the steps again (otherwise a secondary process
    could still see, and later refuse to re-save, a step being moved).

    Returns:
      The new paths (as named by process 0's clock; on other processes the
      seconds in the name may differ in the log message).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    root = epath.Path(self.directory)  # local or cloud (gs://) directories
    for step in steps:
      src = root / str(step)
      dst = root / f"{step}.corrupt-{stamp}"
      n = 1
      while dst.exists():  # the same step moved aside twice in one second
        dst = root / f"{step}.corrupt-{stamp}-{n}"
        n += 1
      moved.append(os.fspath(dst))
      if jax.process_index() == 0 and src.is_dir():
        src.rename(dst)
    if jax.process_count() > 1:
      self._barriers += 1
      ocp.multihost.sync_global_processes(
          f"jdarts_checkpoint_quarantine_{self._barriers}")
    self._mgr.reload()
    return moved

  def wait(self) -> None:
    """Blocks until pending (async) saves and deletions have finished."""
    self._mgr.wait_until_finished()

  def close(self) -> None:
    """Waits for pending work and releases orbax's threads."""
    self._mgr.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else ""


class PreemptionFlag:
  """Set by SIGTERM or SIGINT, so the loop can save and stop at a step boundary.

  The first signal sets the flag (and logs); the loop should check
  `flag.is_set` after each step, save a checkpoint and exit. A second
  SIGINT (Ctrl-C) raises `KeyboardInterrupt` as usual; a second SIGTERM is
  only logged. `uninstall` (or leaving the `with` block) restores the
  previous handlers.

  Signal handlers can only be installed from the main thread; elsewhere
  `install` does nothing (the flag then only changes through `set`).
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    """Creates an uninstalled flag.

    Args:
      signals: the signals to catch.
    """
    self.signals = tuple(signals)
    self._event = threading.Event()
    self._previous: Dict[int, Any] = {}
    self.signum: Optional[int] = None

  @property
  def is_set(self) -> bool:
    """True once a signal arrived (or `set` was called)."""
    return self._event.is_set()

  def __bool__(self) -> bool:
    return self.is_set

  @property
  def installed(self) -> bool:
    """True while this object's handlers are installed."""
    return bool(self._previous)

  def set(self, signum: Optional[int] = None) -> None:
    """Sets the flag by hand (e.g. on another preemption notice).

    Args:
      signum: the signal to report, if any.
    """
    if self.signum is None:
      self.signum = signum
    self._event.set()

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.is_set:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      log.warning("received %s again; already stopping at the next step", name)
      return
    self.set(signum)
    log.warning("received %s: saving a checkpoint and stopping after the current step "
                "(Ctrl-C again to stop immediately)", name)

  def install(self) -> "PreemptionFlag":
    """Installs the handlers (main thread only; elsewhere a no-op).

    Returns:
      self.
    """
    if threading.current_thread() is not threading.main_thread():
      log.debug("not installing signal handlers: not in the main thread")
      return self
    if self.installed:
      return self
    for s in self.signals:
      self._previous[s] = signal.getsignal(s)
      signal.signal(s, self._handle)
    return self

  def uninstall(self) -> None:
    """Restores the handlers that were installed before `install`."""
    if threading.current_thread() is not threading.main_thread():
      return
    for s, prev in self._previous.items():
      # None: a handler installed outside Python, which cannot be reinstated.
      signal.signal(s, signal.SIG_DFL if prev is None else prev)
    self._previous = {}

  def __enter__(self) -> "PreemptionFlag":
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()


def install_signal_handlers(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
                            ) -> PreemptionFlag:
  """Installs a `PreemptionFlag` for `signals`.

  Args:
    signals: the signals that request a clean stop.

  Returns:
    The installed flag; call `uninstall()` (or use it in a `with` block) to
    restore the previous handlers.
  """
  return PreemptionFlag(signals).install()
