"""Held-out evaluation by masked sums, shared by search and train.

A loss reports count-weighted means ('loss', its metrics) and 'count', the
number of real (unmasked) examples. Summing mean * count over batches and
devices and dividing by the summed count gives exact means, however the last
batch was padded and however the batch was split over devices.

`evaluate` hands the last batch to the step without its padding rows: a search
supernet normalises with the statistics of its batch (paper A.1.1), and zero
rows would shift those moments and so the predictions of the real rows. That
costs one more compilation, for the last batch's shape.

Across devices (`ParallelEval`) the full batches run device-parallel, with the
BatchNorm moments averaged over the devices, and a last batch that does not
split evenly over them runs on one device without its padding: either way
every batch is normalised by the moments of its real rows only, so a
device-parallel evaluation gives what one device gives.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jdarts import host_memory
from jdarts import parallel

log = logging.getLogger("jdarts")


def masked_sums(aux: Dict[str, jnp.ndarray], names: Sequence[str],
                axis_name: Optional[str] = None) -> Dict[str, jnp.ndarray]:
  """{'loss', *names} means and 'count' -> their sums over the real examples.

  Args:
    aux: float32 scalars 'loss', 'count' and every name in `names`.
    names: the metrics besides 'loss' (e.g. ('accuracy',)).
    axis_name: sum over this device axis too; None on one device.

  Returns:
    {'loss': sum, name: sum, ..., 'count': total}, psum-ed over `axis_name`.
  """
  out = {k: aux[k] * aux["count"] for k in ("loss",) + tuple(names)}
  out["count"] = aux["count"]
  return out if axis_name is None else jax.lax.psum(out, axis_name)


def make_eval_step(space, *, axis_name: Optional[str] = None) -> Callable:
  """`(params, alphas, batch, rng, carry) -> (sums, carry)` of a search space's loss.

  The supernet in training mode (batch statistics), as the paper evaluates it.
  """
  def step(params, alphas, batch, rng, carry):
    _, aux, carry = space.loss(params, alphas, batch, rng, carry)
    return masked_sums(aux, space.metric_names, axis_name), carry
  return step


def finish(totals, names: Sequence[str]) -> Dict[str, float]:
  """Summed metrics -> {'loss', *names: means, 'count': examples}."""
  totals = jax.device_get(totals)
  count = float(totals["count"])
  out = {k: float(totals[k]) / max(count, 1.0) for k in ("loss",) + tuple(names)}
  out["count"] = count
  return out


def accumulate(sums: Iterable[Dict[str, jnp.ndarray]]):
  """Adds up per-batch sums; ValueError if there were no batches."""
  totals = None
  for s in sums:
    totals = s if totals is None else jax.tree_util.tree_map(jnp.add, totals, s)
  if totals is None:
    raise ValueError("evaluation got no batches: the held-out split is empty.")
  return totals


def unpadded(batch, carry):
  """`batch` without its trailing padding rows (`mask == 0`), and `carry` cut alike.

  Args:
    batch: a dict with an optional (B,) 'mask'; other pytrees pass unchanged.
    carry: the space's carry (leaves with the batch axis first) or None.

  Returns:
    (batch, carry) with n rows, n the number of real rows, when the padding
    is the last B - n rows; otherwise both unchanged.
  """
  mask = batch.get("mask") if isinstance(batch, dict) else None
  if mask is None:
    return batch, carry
  mask = np.asarray(mask)
  rows, n = mask.shape[0], int(np.count_nonzero(mask))
  if n in (0, rows) or not mask[:n].all():
    return batch, carry
  cut = lambda x: x[:n] if np.ndim(x) and np.shape(x)[0] == rows else x
  return jax.tree_util.tree_map(cut, batch), jax.tree_util.tree_map(cut, carry)


def _batch_key(rng, i: int):
  """The loss key `evaluate` hands its step for batch i (rng None: key 0)."""
  return jax.random.fold_in(jax.random.PRNGKey(0) if rng is None else rng, i)


def evaluate(space, eval_step: Callable, params, alphas, batches, *, rng=None,
             batch_size: int = 0) -> Dict[str, float]:
  """Runs a jitted `make_eval_step` over `batches`, threading the space's carry.

  Args:
    space: the search space (its `metric_names`, `init_carry`, `summarize`).
    eval_step: `parallel.jit(make_eval_step(space))`.
    params, alphas: the supernet's weights and architecture.
    batches: an iterable of batches (the last one may be padded, with 'mask';
      it is evaluated without the padding rows, see `unpadded`).
    rng: key for the loss (dropout is off in the DARTS spaces); default key 0.
    batch_size: rows per batch, for `init_carry`.

  Returns:
    `space.summarize` of {'loss', metric means, 'count'}.
  """
  carry = space.init_carry(batch_size)

  def sums():
    nonlocal carry
    for i, batch in enumerate(batches):
      batch, carry = unpadded(batch, carry)
      s, carry = eval_step(params, alphas, batch, _batch_key(rng, i), carry)
      yield s
  out = finish(accumulate(sums()), space.metric_names)
  return space.summarize(out)


def distinct_batches(eval_batches: Dict[str, Callable[[], Any]], batch_size: int, space):
  """[(batch, carry)]: one of each shape `evaluate` hands its step.

  Peeks at the first and the last batch of each held-out set where its
  iterable allows (`len` and `peek`, as the image pipeline's streams), else at
  the first only; each is taken as `evaluate` passes it (`unpadded`).
  """
  out, seen = [], set()
  for make in eval_batches.values():
    it = make()
    if hasattr(it, "peek") and hasattr(it, "__len__"):
      picks = [it.peek(0), it.peek(len(it) - 1)] if len(it) else []
    else:
      picks = [b for b in [next(iter(it), None)] if b is not None]
    for batch in picks:
      batch, carry = unpadded(batch, space.init_carry(batch_size))
      key = parallel.signature((batch, carry))
      if key not in seen:
        seen.add(key)
        out.append((batch, carry))
  return out


class WarmUp:
  """Compiles a jitted eval step for the held-out batch shapes in a background thread.

  A search ends with a held-out evaluation that compiles one program per batch
  shape (full batches; each set's last batch without its padding). Started
  beside the search step's compilation, those compiles use the cores it
  leaves idle instead of waiting until the end (quickstart: ~5 s each).

  Args:
    eval_step: the jitted `make_eval_step`, as `evaluate` will call it.
    params, alphas: arrays placed as the final evaluation's will be (jit keeps
      one program per argument placement too): copies of the state the
      search starts from, since the search donates that state.
    samples: `distinct_batches`.

  `join()` before evaluating. A failure here is left for the real evaluation
  to report (`error` keeps it).
  """

  def __init__(self, eval_step: Callable, params, alphas, samples):
    self.error: Optional[BaseException] = None
    key = _batch_key(None, 0)  # a key as `evaluate` passes one: same program

    def run():
      try:
        for batch, carry in samples:
          jax.block_until_ready(eval_step(params, alphas, batch, key, carry))
      except Exception as e:  # pylint: disable=broad-except
        self.error = e
      # Its compiles' garbage, as `Run.steps` hands back the step's.
      released = host_memory.release_measured()
      if released and self.error is None:
        log.info("held-out evaluation compiled ahead (%d programs); host memory %.0f MB "
                 "-> %.0f MB after handing the compiler's freed memory back",
                 len(samples), *released)
    self._thread = threading.Thread(target=run, name="eval-warm-up", daemon=True)
    self._thread.start()

  def join(self) -> None:
    self._thread.join()


@flax.struct.dataclass
class _EvalState:
  """What a device-parallel evaluation holds per call (`carry` split by rows)."""
  params: Any
  alphas: Any
  rng: Any
  carry: Any = None


class ParallelEval:
  """A device-parallel eval step with `evaluate`'s signature, padding-exact.

  `evaluate` cuts a padded last batch to its real rows; a batch whose rows
  split evenly over the devices then runs device-parallel, any other (the
  cut last batch, usually) on the first device alone. With the BatchNorm
  moments averaged across devices (`space` built with `bn_axis_name=axis_name`)
  each batch is normalised by the moments of exactly its real rows, as on one
  device, so `evaluate(space, ParallelEval(...), ...)` equals
  `evaluate(single_space, parallel.jit(make_eval_step(single_space)), ...)`.

  Args:
    space: the search space built with `bn_axis_name=axis_name` (or None to
      normalise per device: then the device-parallel batches are normalised
      per device, which one device cannot reproduce).
    single_space: the same space built with `bn_axis_name=None`, for the
      batches that run on one device.
    backend: 'pmap' | 'shard_map' (`jdarts.parallel.ParallelStep`).
    devices: devices to use (default: all local devices).
    axis_name: the device axis name `space` was built with.

  Call: `(params, alphas, batch, rng, carry) -> (sums, carry)`, batch leaves
  (B, ...), carry leaves (B, ...) or None, as `parallel.jit(make_eval_step(space))`.
  """

  def __init__(self, space, single_space, *, backend: str = "pmap",
               devices: Optional[Sequence[Any]] = None, axis_name: str = parallel.AXIS):
    if backend not in ("pmap", "shard_map"):
      raise ValueError(f"ParallelEval backend must be 'pmap' or 'shard_map', got {backend!r}; "
                       "on one device use jdarts.parallel.jit(make_eval_step(space)).")
    per_device = make_eval_step(space, axis_name=axis_name)

    def step(state, batch):
      sums, carry = per_device(state.params, state.alphas, batch, state.rng, state.carry)
      return state.replace(carry=carry), sums

    self._parallel = parallel.ParallelStep(step, backend=backend, devices=devices,
                                           axis_name=axis_name, donate=False, num_batches=1)
    self._single = parallel.jit(make_eval_step(single_space))
    self.num_devices = self._parallel.num_devices

  def __call__(self, params, alphas, batch, rng, carry):
    rows = {np.shape(x)[0] for x in jax.tree_util.tree_leaves(batch) if np.ndim(x)}
    if len(rows) != 1:
      raise ValueError(f"a batch's arrays disagree on the number of rows: {sorted(rows)}.")
    if rows.pop() % self.num_devices:
      return self._single(params, alphas, batch, rng, carry)
    p = self._parallel
    state = p.put_state(_EvalState(params, alphas, rng, carry))
    state, sums = p(state, batch)
    carry = p.get_state(state).carry if carry is not None else None
    return p.get_metrics(sums), carry
