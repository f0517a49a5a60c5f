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

A state with a `carry` attribute (`jdarts.search.SearchState`) holds per-row
values there (a recurrent hidden state per sequence): that part is split over
the devices along its leading (batch) axis like a batch, the rest replicated.

All three give the same numbers for the same global batch (tests/test_parallel.py),
because every statistic is averaged over the whole global batch.

Multi-host: `maybe_initialize_distributed()` is the one place that starts
`jax.distributed`, driven by the environment (explicit JDARTS_* variables,
SLURM, Open MPI, TPU pods); see `distributed_args_from_env`.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jdarts import host_memory, staged

BACKENDS = ("pmap", "shard_map", "none")
AXIS = "batch"

# XLA:CPU expands optimisation barriers away early in its pipeline (its
# `cse_barrier_expander` pass); CSE then merged `jax.checkpoint`'s recomputation
# back into the forward pass (remat saved no memory on CPU) and fusion recomputed
# barrier-fenced values in every consumer (benchmarks/RESULTS.md, issue 17,
# sessions 8 and 9). With that pass off the barriers stay, as they do on GPU and
# TPU; programs without barriers compile as before.
_KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def default_compiler_options(platform: Optional[str] = None) -> Dict[str, str]:
  """The XLA options jdarts compiles its steps with on `platform` (default: JAX's backend).

  On CPU: keep optimisation barriers, so that `jax.checkpoint` (`model.remat`)
  saves memory there too and the supernets' mixed outputs are computed once
  (`cells.MixedOp`). Elsewhere: none. Pass them to `jax.jit(...,
  compiler_options=...)` or `Lowered.compile(compiler_options=...)`, or use `jit`.
  """
  return dict(_KEEP_BARRIERS) if (platform or jax.default_backend()) == "cpu" else {}


def signature(tree) -> tuple:
  """What `jax.jit` compiles one program per: the tree's structure and each leaf's
  shape, dtype and weak type (arrays, numpy arrays or Python scalars)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x))),
                         getattr(x, "weak_type", False)) for x in leaves)


def jit(fun: Callable, **kwargs) -> Callable:
  """`jax.jit(fun, **kwargs)` compiled with `default_compiler_options()`, as the steps are."""
  return jax.jit(fun, compiler_options=default_compiler_options() or None, **kwargs)


def check_divisible(batch_size: int, num_devices: int) -> None:
  """Raises ValueError unless the global batch splits evenly over the devices."""
  if batch_size % num_devices:
    raise ValueError(f"batch_size={batch_size} does not split over {num_devices} devices; "
                     f"use a multiple of {num_devices} (or --config.parallel.num_devices).")


class ParallelStep:
  """Wraps a per-device `step(state, *batches) -> (state, metrics)` for many devices.

  Args:
    per_device_step: the step, using collectives over `axis_name` when
      num_devices > 1; a `jdarts.staged.StagedStep` runs as one program per
      stage (its replicated scratch placed like the state, its rows like a
      batch), only the last taking over (donated) the state's buffers.
    backend: 'pmap' | 'shard_map' | 'none'.
    devices: devices to use (default: all local devices; 'none' uses one).
    axis_name: the collective axis name the step was built with.
    donate: donate the state buffers to the step (halves peak state memory).
    num_batches: how many batch arguments follow the state (2 for the search
      step's train and val batches, 1 for a training step).
    compiler_options: XLA options for the step's program; None: the
      platform's `default_compiler_options()`.
  """

  def __init__(self, per_device_step: Callable, *, backend: str = "pmap",
               devices: Optional[Sequence[Any]] = None, axis_name: str = AXIS,
               donate: bool = True, num_batches: int = 2,
               compiler_options: Optional[Mapping[str, Any]] = None):
    if backend not in BACKENDS:
      raise ValueError(f"parallel.backend={backend!r} is unknown; choose one of {BACKENDS}.")
    self.backend = backend
    self.axis_name = axis_name
    # Several processes (multi-host): every global device takes part, each
    # process feeds its local devices with its own rows of the global batch.
    self.multi_process = jax.process_count() > 1 and backend != "none"
    if self.multi_process and devices is not None:
      raise ValueError("with several processes every device takes part; do not pass "
                       "devices (use --config.parallel.num_devices=0).")
    self.devices = list(devices) if devices is not None else jax.local_devices()
    if backend == "none":
      self.devices = self.devices[:1]
    self.num_devices = len(self.devices)  # local devices of this process
    if compiler_options is None:
      compiler_options = default_compiler_options(self.devices[0].platform)
    self.compiler_options = dict(compiler_options) or None
    self._step, self._donate, self._num_batches = per_device_step, donate, num_batches
    if isinstance(per_device_step, staged.StagedStep) and num_batches != 2:
      raise ValueError(f"a staged step takes a train and a val batch, not {num_batches}.")
    if backend == "shard_map":
      mesh_devices = jax.devices() if self.multi_process else self.devices
      self.mesh = Mesh(np.asarray(mesh_devices), (axis_name,))
      self._replicated = NamedSharding(self.mesh, P())
      self._split = NamedSharding(self.mesh, P(axis_name))
      self._fn = None  # built by put_state, which sees whether the state has a carry
    else:
      self._fn = self._build(None)

  def _build(self, state_specs) -> Callable:
    """The step over the devices; a `StagedStep`'s stages each as their own program."""
    step = self._step
    if not isinstance(step, staged.StagedStep):
      return self._wrap(step, True, state_specs, ())
    rows = P(self.axis_name) if self.backend == "shard_map" else None
    scratch = {staged.REP: P(), staged.ROWS: rows}
    progs = {n: self._wrap(f, n == step.final, state_specs, (scratch,))
             for n, f in step.stages.items()}
    compiled = set()

    def call(name, *args):
      out = progs[name](*args)
      if name not in compiled:
        # The stage compiled within the call: the compiler's freed heap goes back
        # to the OS before the next stage compiles, or glibc keeps every stage's
        # (small setting: compile peak 4.6 against 5.2 GB; benchmarks/RESULTS.md).
        compiled.add(name)
        host_memory.release()
      return out
    return lambda state, *batches: step.run(call, state, *batches)

  def _wrap(self, fn: Callable, final: bool, state_specs, extra_specs) -> Callable:
    # Only the program returning the new state may take over the old one's buffers.
    donate = (0,) if (self._donate and final) else ()
    if self.backend == "pmap":
      # devices=None under several processes: pmap then spans all processes.
      out = jax.pmap(fn, axis_name=self.axis_name,
                     devices=None if self.multi_process else self.devices,
                     donate_argnums=donate)
      return _PmapWithOptions(out, self.compiler_options) if self.compiler_options else out
    if self.backend == "shard_map":
      # check_vma=False: gradients w.r.t. the replicated state are then per-device
      # values that the step averages itself, exactly as under pmap.
      batch = (P(self.axis_name),) * self._num_batches
      mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(state_specs,) + batch + extra_specs,
                             out_specs=(state_specs, P()) if final else extra_specs[0],
                             check_vma=False)
      return jax.jit(mapped, donate_argnums=donate, compiler_options=self.compiler_options)
    return jax.jit(fn, donate_argnums=donate, compiler_options=self.compiler_options)

  # Moving values in and out --------------------------------------------------
  def _state_specs(self, state):
    """The state's partition: P() everywhere, P(axis) on the carry's leaves."""
    specs = jax.tree_util.tree_map(lambda _: P(), _without_carry(state))
    if _carry(state) is None:
      return specs
    return specs.replace(carry=jax.tree_util.tree_map(lambda _: P(self.axis_name),
                                                      _carry(state)))

  def put_state(self, state):
    """Places a host/global state the way the step expects it."""
    if _carry(state) is not None and self.multi_process:
      raise NotImplementedError(
          "a search state with a carry (a recurrent space) runs on one process for now: "
          "each process would hold only its rows of it; use one host.")
    if self.backend == "pmap":
      n = self.num_devices
      stacked = jax.tree_util.tree_map(
          lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), _without_carry(state))
      if _carry(state) is not None:
        stacked = stacked.replace(carry=self.put_batch(jax.device_get(_carry(state))))
      # An identity pmap places slice i on device i, as the step's outputs are.
      # The same axis name as the step's, or the arrays' shardings differ
      # from the step's outputs and the second call retraces.
      return jax.pmap(lambda x: x, axis_name=self.axis_name,
                      devices=None if self.multi_process else self.devices)(stacked)
    if self.backend == "shard_map":
      if self._fn is None:
        self._fn = self._build(self._state_specs(state))
      if self.multi_process:
        def replicate(x):
          x = np.asarray(x)
          return jax.make_array_from_callback(x.shape, self._replicated, lambda i: x[i])
        return jax.tree_util.tree_map(replicate, state)
      if _carry(state) is None:
        return jax.device_put(state, self._replicated)
      placed = jax.device_put(_without_carry(state), self._replicated)
      return placed.replace(carry=self.put_batch(_carry(state)))
    return jax.device_put(state, self.devices[0])

  def get_state(self, state):
    """The global state (one copy, on this process's first device) from the step's."""
    if self.backend == "pmap":
      # The copy on this process's first device: x[0] would need device 0,
      # which another process owns under multi-host.
      out = jax.tree_util.tree_map(
          lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]),
          _without_carry(state))
      if _carry(state) is None:
        return out
      # The devices' rows, in device order: the global batch's row order.
      return out.replace(carry=jax.tree_util.tree_map(
          lambda x: x.reshape((-1,) + x.shape[2:]), _carry(state)))
    if self.multi_process:
      return jax.tree_util.tree_map(lambda x: x.addressable_shards[0].data, state)
    return state

  def put_batch(self, batch):
    """Splits a batch across the local devices.

    Args:
      batch: pytree of arrays with leading axis B: the global batch, or with
        several processes this process's B / process_count rows of it.
    """
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
      if self.multi_process:
        # `batch` holds this process's rows; together they form the global batch.
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(self._split, np.asarray(x)),
            batch)
      return jax.device_put(batch, self._split)
    return batch

  def get_metrics(self, metrics):
    """Metrics as one value each (they are averaged over devices inside the step)."""
    if self.backend == "pmap" or self.multi_process:
      return self.get_state(metrics)
    return metrics

  def __call__(self, state, *batches):
    """Runs one step on placed state (`put_state`) and global batches."""
    if self._fn is None:
      raise RuntimeError("place the state with put_state() before the first step.")
    return self._fn(state, *[self.put_batch(b) for b in batches])


class _PmapWithOptions:
  """A pmapped function compiled with XLA options (`jax.pmap` takes none).

  Lowers and compiles once per argument signature (tree, shapes, dtypes),
  as `jax.pmap` itself would retrace.
  """

  def __init__(self, pmapped: Callable, options: Mapping[str, Any]):
    self._pmapped, self._options, self._compiled = pmapped, dict(options), {}

  def __call__(self, *args):
    key = signature(args)
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self._compiled[key] = self._pmapped.lower(*args).compile(
          compiler_options=self._options)
    return compiled(*args)


def _carry(state):
  return getattr(state, "carry", None)


def _without_carry(state):
  return state.replace(carry=None) if _carry(state) is not None else state


# Multi-host initialisation --------------------------------------------------
log = logging.getLogger(__name__)

_EXPLICIT = ("JDARTS_COORDINATOR", "JDARTS_NUM_PROCESSES", "JDARTS_PROCESS_ID")


def _env_int(env: Mapping[str, str], name: str) -> int:
  value = env[name]
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer.") from None


def distributed_args_from_env(env: Mapping[str, str]) -> Optional[Dict[str, Any]]:
  """Decides from environment variables whether and how to start `jax.distributed`.

  Checked in this order; the first that applies wins:

  1. `JDARTS_DISTRIBUTED=0`: never (single process, even under SLURM).
  2. `JDARTS_COORDINATOR` (host:port of process 0), `JDARTS_NUM_PROCESSES`,
     `JDARTS_PROCESS_ID`: explicit; all three are required once any is set.
     Optional `JDARTS_LOCAL_DEVICE_IDS` ("0,1") restricts this process's devices.
  3. `JDARTS_DISTRIBUTED=1`: JAX's own cluster auto-detection (TPU VM pods,
     SLURM, Open MPI, Kubernetes).
  4. SLURM, `SLURM_JOB_ID` with more than one task (`SLURM_STEP_NUM_TASKS`,
     else `SLURM_NTASKS`): JAX's SLURM detection
     (coordinator: first node of `SLURM_STEP_NODELIST`, port from the job id or
     `JAX_COORDINATOR_PORT`; one GPU per task via `SLURM_LOCALID`). Needs the
     variables that `srun` sets.
  5. Open MPI, `OMPI_COMM_WORLD_SIZE` > 1 (launched by `mpirun`): JAX's Open MPI detection.
  6. TPU, `TPU_WORKER_HOSTNAMES` naming more than one host: JAX's TPU detection.

  Args:
    env: the environment, e.g. `os.environ`.

  Returns:
    Keyword arguments for `jax.distributed.initialize` ({} means "detect
    everything"), or None when this is a single-process run.

  Raises:
    ValueError: an incomplete or malformed explicit setting, or SLURM with
      several tasks but without the variables `srun` sets.
  """
  flag = env.get("JDARTS_DISTRIBUTED", "").strip().lower()
  if flag not in ("", "0", "1", "false", "true", "no", "yes"):
    raise ValueError(f"JDARTS_DISTRIBUTED={env['JDARTS_DISTRIBUTED']!r}: use 1 (start "
                     "jax.distributed, detecting the cluster) or 0 (never).")
  if flag in ("0", "false", "no"):
    return None

  given = [k for k in _EXPLICIT if env.get(k, "") != ""]
  if given:
    missing = [k for k in _EXPLICIT if k not in given]
    if missing:
      raise ValueError(f"{', '.join(given)} set but {', '.join(missing)} not: set all of "
                       f"{', '.join(_EXPLICIT)} (or none, to detect the cluster).")
    coordinator = env["JDARTS_COORDINATOR"].strip()
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}", coordinator):
      raise ValueError(f"JDARTS_COORDINATOR={coordinator!r} must be host:port of process 0, "
                       "e.g. 10.0.0.1:1234.")
    num_processes = _env_int(env, "JDARTS_NUM_PROCESSES")
    process_id = _env_int(env, "JDARTS_PROCESS_ID")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"JDARTS_PROCESS_ID={process_id} and JDARTS_NUM_PROCESSES="
                       f"{num_processes}: need 0 <= process id < number of processes.")
    args: Dict[str, Any] = dict(coordinator_address=coordinator,
                                num_processes=num_processes, process_id=process_id)
    ids = env.get("JDARTS_LOCAL_DEVICE_IDS", "").strip()
    if ids:
      try:
        args["local_device_ids"] = [int(i) for i in ids.split(",")]
      except ValueError:
        raise ValueError(f"JDARTS_LOCAL_DEVICE_IDS={ids!r} must be comma-separated "
                         "integers, e.g. 0,1.") from None
    return args

  if flag in ("1", "true", "yes"):
    return {}

  # SLURM_STEP_NUM_TASKS (set by srun for its step) wins over the job's
  # SLURM_NTASKS: e.g. `srun -n 1` inside an 8-task allocation is one process.
  slurm_tasks = _env_int_or(env, "SLURM_STEP_NUM_TASKS", _env_int_or(env, "SLURM_NTASKS", 1))
  if env.get("SLURM_JOB_ID") and slurm_tasks > 1:
    missing = [k for k in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST")
               if k not in env]
    if missing:
      raise ValueError(
          f"SLURM job {env['SLURM_JOB_ID']} has {slurm_tasks} tasks but "
          f"{', '.join(missing)} is not set: start one process per task with srun "
          "(see launch/slurm_gpu.sbatch), or set JDARTS_DISTRIBUTED=0 for one process.")
    return {"cluster_detection_method": "slurm"}

  if _env_int_or(env, "OMPI_COMM_WORLD_SIZE", 1) > 1:
    return {"cluster_detection_method": "ompi"}

  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return {}
  return None


def _env_int_or(env: Mapping[str, str], name: str, default: int) -> int:
  return _env_int(env, name) if env.get(name, "") != "" else default


def maybe_initialize_distributed(env: Mapping[str, str] = os.environ) -> bool:
  """Starts `jax.distributed` once, if the environment asks for it.

  Call it first thing, before anything touches a JAX device (`jax.devices()`,
  computations, `device_put`); JAX refuses to initialise afterwards. Every
  process of a multi-host run calls it with its own environment. On CPU the
  cross-process collectives use gloo (`jax_cpu_collectives_implementation`,
  set here unless already chosen).

  Args:
    env: the environment to read (see `distributed_args_from_env`).

  Returns:
    True if this call initialised `jax.distributed`; False if it was already
    initialised or the environment describes a single-process run.
  """
  if jax.distributed.is_initialized():
    return False
  args = distributed_args_from_env(env)
  if args is None:
    return False
  if jax.config.jax_cpu_collectives_implementation is None:
    # CPU only (GPU/TPU have their own collectives); gloo is the default from
    # JAX 0.5 on, but was opt-in before.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  described = ", ".join(f"{k}={v}" for k, v in args.items()) or "auto-detected cluster"
  log.info("starting jax.distributed (%s)", described)
  try:
    jax.distributed.initialize(**args)
  except RuntimeError as e:
    if "before any JAX calls" in str(e):
      raise RuntimeError(f"{e} Call jdarts.parallel.maybe_initialize_distributed() at "
                         "the very start of the program.") from e
    raise
  log.info("jax.distributed started: process %d of %d, %d local / %d global devices",
           jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())
  return True
