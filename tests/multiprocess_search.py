"""Runs JAX in several local processes joined by `jax.distributed` (CPU, gloo).

A check that multi-process JAX works on this machine, and a reusable launcher
for multi-process tests: `launch` starts N copies of a command on localhost
with the JDARTS_* variables that `jdarts.parallel.maybe_initialize_distributed`
reads, each process with its own fake CPU devices.

  python tests/multiprocess_search.py                 # 2 processes x 2 devices
  python tests/multiprocess_search.py --processes 2 --devices 1

The check: every process feeds its rows of one global batch to a data-parallel
step over *all* global devices (`jax.pmap` and `jax.jit(jax.shard_map)`), with
`lax.psum` / `lax.pmean` across processes, and the result must equal the same
step in one process holding all the devices. Exit status 0 when it does.

Not a pytest module (tests/test_multiprocess.py runs it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

_HERE = os.path.abspath(__file__)
_ROOT = os.path.dirname(os.path.dirname(_HERE))


def free_port() -> int:
  """A TCP port that is free on localhost now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int, local_devices: int,
                env_extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
  """The environment of one process: JDARTS_* variables and its fake CPU devices."""
  env = dict(os.environ)
  # Replace (not add to) any device count inherited, e.g. from tests/conftest.py.
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                 env.get("XLA_FLAGS", "")).split()
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count="
                                       f"{local_devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
  for k in ("JDARTS_DISTRIBUTED", "JDARTS_LOCAL_DEVICE_IDS"):
    env.pop(k, None)
  if num_processes > 1:
    env.update(JDARTS_COORDINATOR=f"127.0.0.1:{port}",
               JDARTS_NUM_PROCESSES=str(num_processes),
               JDARTS_PROCESS_ID=str(process_id))
  else:
    for k in ("JDARTS_COORDINATOR", "JDARTS_NUM_PROCESSES", "JDARTS_PROCESS_ID"):
      env.pop(k, None)
    env["JDARTS_DISTRIBUTED"] = "0"
  env.update(env_extra or {})
  return env


def launch(num_processes: int, argv: Sequence[str], env_extra: Optional[Dict[str, str]] = None,
           *, local_devices: int = 2, timeout: float = 120.0, cwd: Optional[str] = None
           ) -> List[subprocess.CompletedProcess]:
  """Runs `argv` in `num_processes` processes on localhost, joined by jax.distributed.

  Each process gets JDARTS_COORDINATOR=127.0.0.1:<free port>,
  JDARTS_NUM_PROCESSES, JDARTS_PROCESS_ID (or JDARTS_DISTRIBUTED=0 when
  num_processes is 1), JAX_PLATFORMS=cpu and `local_devices` fake CPU devices.
  The command must call `jdarts.parallel.maybe_initialize_distributed()`
  before using JAX (`jdarts search` does).

  Args:
    num_processes: how many processes.
    argv: the command, e.g. [sys.executable, '-m', 'jdarts.cli', 'search', ...].
    env_extra: variables added to (overriding) every process's environment.
    local_devices: fake CPU devices per process.
    timeout: seconds for all processes together; on expiry all are killed.
    cwd: working directory (default: the repository root).

  Returns:
    One CompletedProcess per process id (stdout and stderr captured as text);
    a process killed at the timeout has returncode -9 and "TIMEOUT" appended
    to its stderr.
  """
  port = free_port()
  procs = []
  outs = []
  for i in range(num_processes):
    # Files, not pipes: a process that fills a pipe nobody reads would hang.
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    outs.append((out, err))
    procs.append(subprocess.Popen(
        list(argv), cwd=cwd or _ROOT, stdout=out, stderr=err, text=True,
        env=process_env(i, num_processes, port, local_devices, env_extra)))
  deadline = time.monotonic() + timeout
  timed_out = False
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      timed_out = True
      break
  if timed_out:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  results = []
  for p, (out, err) in zip(procs, outs):
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    out.close()
    err.close()
    if timed_out and p.returncode == -9:
      stderr += f"\nTIMEOUT after {timeout:.0f} s"
    results.append(subprocess.CompletedProcess(list(argv), p.returncode, stdout, stderr))
  return results


# The worker ---------------------------------------------------------------------
GLOBAL_BATCH = 8  # rows; splits over 1, 2, 4 or 8 global devices


def _worker() -> Dict[str, object]:
  """One process's part of the data-parallel check; returns what it computed."""
  from jdarts import parallel
  started = parallel.maybe_initialize_distributed()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  n_proc, pid = jax.process_count(), jax.process_index()
  n_dev, n_local = jax.device_count(), jax.local_device_count()
  rows = GLOBAL_BATCH // n_proc  # this process's rows of the global batch
  x_global = np.arange(GLOBAL_BATCH * 3, dtype=np.float32).reshape(GLOBAL_BATCH, 3) / 7
  x_local = x_global[pid * rows:(pid + 1) * rows]
  w = np.asarray([0.5, -1.0, 2.0], np.float32)

  def per_device(w, x):
    """A data-parallel step: gradient of a mean squared loss, averaged over devices."""
    loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w - 1.0) ** 2))(w)
    return (lax.pmean(g, "batch"), lax.pmean(loss, "batch"),
            lax.psum(jnp.sum(x), "batch"), lax.psum(1, "batch"))

  # pmap over every global device; this process feeds its local ones.
  per_dev = rows // n_local
  w_rep = np.broadcast_to(w, (n_local,) + w.shape)
  out = jax.pmap(per_device, axis_name="batch")(
      w_rep, x_local.reshape(n_local, per_dev, 3))
  pmap_res = [np.asarray(o.addressable_shards[0].data).reshape(np.shape(o)[1:]).tolist()
              for o in out]

  # jit(shard_map) over a mesh of every global device.
  mesh = Mesh(np.asarray(jax.devices()), ("batch",))
  x_arr = jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), x_local)
  w_arr = jax.make_array_from_callback(w.shape, NamedSharding(mesh, P()), lambda i: w[i])
  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("batch")),
                             out_specs=(P(), P(), P(), P()), check_vma=False))
  out = fn(w_arr, x_arr)
  shard_res = [np.asarray(o.addressable_shards[0].data).tolist() for o in out]
  return dict(started=started, process_index=pid, process_count=n_proc,
              device_count=n_dev, local_device_count=n_local,
              pmap=pmap_res, shard_map=shard_res)


def _parse_result(stdout: str) -> Dict[str, object]:
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  if not lines:
    raise ValueError("no RESULT line")
  return json.loads(lines[-1][len("RESULT "):])


def _close(a, b, tol=1e-6) -> bool:
  if isinstance(a, list):
    return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol)
                                                            for x, y in zip(a, b))
  return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def check(num_processes: int = 2, local_devices: int = 2, timeout: float = 120.0
          ) -> Dict[str, object]:
  """Runs the worker in one process and in `num_processes`, compares the results.

  Returns:
    {'ok': bool, 'message': str, 'seconds_single': float, 'seconds_multi': float}.
  """
  cmd = [sys.executable, _HERE, "--worker"]
  t0 = time.monotonic()
  single = launch(1, cmd, local_devices=num_processes * local_devices, timeout=timeout)
  t1 = time.monotonic()
  multi = launch(num_processes, cmd, local_devices=local_devices, timeout=timeout)
  t2 = time.monotonic()
  report = dict(ok=False, seconds_single=t1 - t0, seconds_multi=t2 - t1, message="")
  for name, runs in (("1 process", single), (f"{num_processes} processes", multi)):
    for i, r in enumerate(runs):
      if r.returncode != 0:
        report["message"] = (f"{name}: process {i} exited with {r.returncode}:\n"
                             f"{r.stderr[-3000:]}")
        return report
  want = _parse_result(single[0].stdout)
  got = [_parse_result(r.stdout) for r in multi]
  n_dev = num_processes * local_devices
  for i, g in enumerate(got):
    if not g["started"] or g["process_count"] != num_processes or g["process_index"] != i \
        or g["device_count"] != n_dev:
      report["message"] = f"process {i} did not join the {n_dev}-device cluster: {g}"
      return report
    for backend in ("pmap", "shard_map"):
      if not _close(g[backend], want[backend]):
        report["message"] = (f"process {i}, {backend}: {g[backend]} differs from the "
                             f"1-process answer {want[backend]}")
        return report
  exact = all(g[b] == want[b] for g in got for b in ("pmap", "shard_map"))
  report.update(ok=True, exact=exact, message=(
      f"{num_processes} processes x {local_devices} CPU devices agree with 1 process x "
      f"{n_dev} devices ({'bitwise' if exact else 'to 1e-6'}); psum over "
      f"{got[0]['pmap'][3]} devices"))
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command line: the check (default) or, with --worker, one process of it."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--processes", type=int, default=2)
  ap.add_argument("--devices", type=int, default=2, help="fake CPU devices per process")
  ap.add_argument("--timeout", type=float, default=120.0)
  args = ap.parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(_worker()), flush=True)
    return 0
  report = check(args.processes, args.devices, args.timeout)
  print(f"{'OK' if report['ok'] else 'FAILED'}: {report['message']}")
  print(f"1 process: {report['seconds_single']:.1f} s; {args.processes} processes: "
        f"{report['seconds_multi']:.1f} s (wall, including start-up)")
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
