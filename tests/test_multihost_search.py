"""`jdarts search` across devices and processes equals the one-device search.

References: the same command on one device of one process, same global batch.
The 2-process run is real: two OS processes joined by `jax.distributed` on
localhost (gloo CPU collectives), each reading only its rows of every batch.
"""
import json
import os
import sys

import numpy as np
import pytest

from jdarts import cli
import helpers

sys.path.insert(0, os.path.dirname(__file__))
import multiprocess_search  # noqa: E402



@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  return helpers.write_tiny_config(tmp_path_factory.mktemp("cfg"))


@pytest.fixture(scope="module")
def one_device(tiny_config, tmp_path_factory):
  """alphas.json of a 3-step search on one device."""
  workdir = tmp_path_factory.mktemp("one")
  assert cli.main(["search", f"--config={tiny_config}", f"--workdir={workdir}",
                   "--config.max_steps=3", "--config.parallel.num_devices=1"]) == 0
  return json.loads((workdir / "alphas.json").read_text())


def _assert_alphas_close(a, b, tol=1e-5):
  assert set(a) == set(b)
  for k in a:
    x, y = np.asarray(a[k]), np.asarray(b[k])
    assert np.abs(x).max() > 1e-3  # the alphas moved, so the comparison means something
    np.testing.assert_allclose(y, x, atol=tol, rtol=0)


def test_four_devices_in_one_process(tiny_config, one_device, tmp_path):
  workdir = tmp_path / "four"
  assert cli.main(["search", f"--config={tiny_config}", f"--workdir={workdir}",
                   "--config.max_steps=3", "--config.parallel.num_devices=4"]) == 0
  _assert_alphas_close(one_device, json.loads((workdir / "alphas.json").read_text()))


@pytest.mark.slow  # ~2 min: two real processes each compile the step (--runslow)
def test_two_processes_with_two_devices_each(tiny_config, one_device, tmp_path):
  workdir = tmp_path / "two"
  argv = [sys.executable, "-m", "jdarts.cli", "search", f"--config={tiny_config}",
          f"--workdir={workdir}", "--config.max_steps=3", "--config.parallel.num_devices=0"]
  results = multiprocess_search.launch(2, argv, local_devices=2, timeout=500)
  for r in results:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "process %d of 2" % results.index(r) in r.stderr
  # Only process 0 writes outputs and prints the result.
  assert "genotype written to" in results[0].stdout
  assert "genotype written to" not in results[1].stdout
  _assert_alphas_close(one_device, json.loads((workdir / "alphas.json").read_text()))
  # Both processes saw all 4 devices (and checked they end with equal alphas).
  assert all("4 device(s) (pmap)" in r.stderr for r in results)
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert steps == [3]
