"""Multi-host start-up: environment parsing, and a real 2-process jax.distributed run on CPU."""
import os
import sys

import jax
import pytest

from jdarts import parallel

sys.path.insert(0, os.path.dirname(__file__))
import multiprocess_search  # noqa: E402  (a script next to this file, not a package)

EXPLICIT = dict(JDARTS_COORDINATOR="10.0.0.1:1234", JDARTS_NUM_PROCESSES="4",
                JDARTS_PROCESS_ID="3")
SRUN = dict(SLURM_JOB_ID="123", SLURM_NTASKS="8", SLURM_PROCID="5", SLURM_LOCALID="1",
            SLURM_STEP_NODELIST="gpu[001-002]")


@pytest.mark.parametrize("env,want", [
    ({}, None),
    ({"PATH": "/bin", "HOME": "/root"}, None),
    (EXPLICIT, dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)),
    (dict(EXPLICIT, JDARTS_LOCAL_DEVICE_IDS="0,1"),
     dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3,
          local_device_ids=[0, 1])),
    (dict(EXPLICIT, JDARTS_COORDINATOR="[::1]:80"),
     dict(coordinator_address="[::1]:80", num_processes=4, process_id=3)),
    # Explicit variables win over a cluster around them.
    (dict(SRUN, **EXPLICIT),
     dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)),
    ({"JDARTS_DISTRIBUTED": "1"}, {}),
    (dict(SRUN, JDARTS_DISTRIBUTED="0"), None),
    (dict(EXPLICIT, JDARTS_DISTRIBUTED="0"), None),
    (SRUN, {"cluster_detection_method": "slurm"}),
    ({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "1"}, None),  # a one-task job
    ({"SLURM_JOB_ID": "123"}, None),
    (dict(SRUN, SLURM_STEP_NUM_TASKS="1"), None),  # `srun -n 1` in a bigger allocation
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {"cluster_detection_method": "ompi"}),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"}, {}),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single-host TPU VM
])
def test_distributed_args_from_env(env, want):
  assert parallel.distributed_args_from_env(env) == want


@pytest.mark.parametrize("env,match", [
    ({"JDARTS_COORDINATOR": "h:1"},
     "JDARTS_COORDINATOR set but JDARTS_NUM_PROCESSES, JDARTS_PROCESS_ID not"),
    ({"JDARTS_COORDINATOR": "h:1", "JDARTS_NUM_PROCESSES": "2"}, "JDARTS_PROCESS_ID not"),
    ({"JDARTS_PROCESS_ID": "0"}, "JDARTS_COORDINATOR, JDARTS_NUM_PROCESSES not"),
    (dict(EXPLICIT, JDARTS_COORDINATOR="10.0.0.1"), "must be host:port"),
    (dict(EXPLICIT, JDARTS_NUM_PROCESSES="four"), "JDARTS_NUM_PROCESSES='four' is not an int"),
    (dict(EXPLICIT, JDARTS_PROCESS_ID="4"), "need 0 <= process id < number of processes"),
    (dict(EXPLICIT, JDARTS_LOCAL_DEVICE_IDS="0;1"), "JDARTS_LOCAL_DEVICE_IDS"),
    ({"JDARTS_DISTRIBUTED": "maybe"}, "JDARTS_DISTRIBUTED='maybe'"),
    # sbatch without srun: one process would wait forever for 7 others.
    ({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "8"}, "start one process per task with srun"),
])
def test_distributed_args_errors_name_the_variable(env, match):
  with pytest.raises(ValueError, match=match):
    parallel.distributed_args_from_env(env)


def test_maybe_initialize_distributed(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  assert not parallel.maybe_initialize_distributed({})
  assert not parallel.maybe_initialize_distributed({"JDARTS_DISTRIBUTED": "0"})
  assert calls == []

  # An unset implementation (the default before JAX 0.5) becomes gloo.
  prev = jax.config.jax_cpu_collectives_implementation
  real_update = jax.config.update
  real_update("jax_cpu_collectives_implementation", None)
  updates = []
  monkeypatch.setattr(jax.config, "update", lambda k, v: updates.append((k, v)))
  try:
    assert parallel.maybe_initialize_distributed(EXPLICIT)
  finally:
    real_update("jax_cpu_collectives_implementation", prev)
  assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)]
  assert updates == [("jax_cpu_collectives_implementation", "gloo")]

  # Idempotent: once initialised, a second call does nothing.
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert not parallel.maybe_initialize_distributed(EXPLICIT)
  assert len(calls) == 1


def test_two_processes_on_cpu_agree_with_one():
  """2 processes x 2 fake CPU devices, gloo collectives; about 7 s on 2 cores."""
  report = multiprocess_search.check(num_processes=2, local_devices=2, timeout=90)
  assert report["ok"], report["message"]
