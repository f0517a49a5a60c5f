"""Data parallelism: one per-device step, wrapped by `jax.pmap` or `jit(shard_map)`.

A per-device step is written once with explicit collectives over a named axis
(`lax.pmean` of gradients, metrics and BatchNorm moments; see
`jdarts.search.make_search_step(axis_name=...)`). `ParallelStep` wraps it so
the caller passes and receives *global* values:

* `backend='pmap'`: state replicated with a leading device axis, batches
  reshaped to (devices, B / devices, ...). The brief's pmapped step.
* `backend='shard_map'`: `jax.jit(jax.shard_map(...))` over a 1-D mesh; state
  replicated (`P()`), batches split along axis 0 (`P(axis)`). The form current
  JAX documentation recommends (pmap is in maintenance mode).
* `backend='none'`: plain `jax.jit` on one device.

All three give the same numbers for the same global batch (tests/test_parallel.py),
because every statistic is averaged over the whole global batch.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BACKENDS = ("pmap", "shard_map", "none")
AXIS = "batch"


def check_divisible(batch_size: int, num_devices: int) -> None:
  """Raises ValueError unless the global batch splits evenly over the devices."""
  if batch_size % num_devices:
    raise ValueError(f"batch_size={batch_size} does not split over {num_devices} devices; "
                     f"use a multiple of {num_devices} (or --config.parallel.num_devices).")


class ParallelStep:
  """Wraps a per-device `step(state, *batches) -> (state, metrics)` for many devices.

  Args:
    per_device_step: the step, using collectives over `axis_name` when
      num_devices > 1.
    backend: 'pmap' | 'shard_map' | 'none'.
    devices: devices to use (default: all local devices; 'none' uses one).
    axis_name: the collective axis name the step was built with.
    donate: donate the state buffers to the step (halves peak state memory).
  """

  def __init__(self, per_device_step: Callable, *, backend: str = "pmap",
               devices: Optional[Sequence[Any]] = None, axis_name: str = AXIS,
               donate: bool = True):
    if backend not in BACKENDS:
      raise ValueError(f"parallel.backend={backend!r} is unknown; choose one of {BACKENDS}.")
    self.backend = backend
    self.devices = list(devices) if devices is not None else jax.local_devices()
    if backend == "none":
      self.devices = self.devices[:1]
    self.num_devices = len(self.devices)
    donate_args = (0,) if donate else ()
    if backend == "pmap":
      self._fn = jax.pmap(per_device_step, axis_name=axis_name, devices=self.devices,
                          donate_argnums=donate_args)
    elif backend == "shard_map":
      self.mesh = Mesh(np.asarray(self.devices), (axis_name,))
      # check_vma=False: gradients w.r.t. the replicated state are then per-device
      # values that the step averages itself, exactly as under pmap.
      mapped = jax.shard_map(per_device_step, mesh=self.mesh,
                             in_specs=(P(), P(axis_name), P(axis_name)),
                             out_specs=(P(), P()), check_vma=False)
      self._fn = jax.jit(mapped, donate_argnums=donate_args)
      self._replicated = NamedSharding(self.mesh, P())
      self._split = NamedSharding(self.mesh, P(axis_name))
    else:
      self._fn = jax.jit(per_device_step, donate_argnums=donate_args)

  # Moving values in and out --------------------------------------------------
  def put_state(self, state):
    """Places a host/global state the way the step expects it."""
    if self.backend == "pmap":
      n = self.num_devices
      stacked = jax.tree_util.tree_map(
          lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
      # An identity pmap places slice i on device i, as the step's outputs are.
      return jax.pmap(lambda x: x, devices=self.devices)(stacked)
    if self.backend == "shard_map":
      return jax.device_put(state, self._replicated)
    return jax.device_put(state, self.devices[0])

  def get_state(self, state):
    """The global state (one copy) from what the step returns."""
    if self.backend == "pmap":
      return jax.tree_util.tree_map(lambda x: x[0], state)
    return state

  def put_batch(self, batch):
    """Splits a global batch (leading axis B) across the devices."""
    n = self.num_devices
    if self.backend == "pmap":
      def split(x):
        x = np.asarray(x)
        check_divisible(x.shape[0], n)
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])
      return jax.tree_util.tree_map(split, batch)
    if self.backend == "shard_map":
      for x in jax.tree_util.tree_leaves(batch):
        check_divisible(np.shape(x)[0], n)
      return jax.device_put(batch, self._split)
    return batch

  def get_metrics(self, metrics):
    """Metrics as one value each (they are averaged over devices inside the step)."""
    if self.backend == "pmap":
      return jax.tree_util.tree_map(lambda x: x[0], metrics)
    return metrics

  def __call__(self, state, *batches):
    """Runs one step on placed state and global batches."""
    return self._fn(state, *[self.put_batch(b) for b in batches])
