"""Checkpoint/resume of `jdarts search`: exact continuation, preemption, NaN stop.

The reference for "exact" is an uninterrupted run of the same config: a run
stopped after 2 steps and resumed to 4 must end in the same state, leaf for
leaf, as one 4-step run (same batches, RNG and optimiser states).
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jdarts import cli
import helpers



@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  return helpers.write_tiny_config(tmp_path_factory.mktemp("cfg"), "c.checkpoint.every_steps = 1")


def _search(config, workdir, *overrides):
  return cli.main(["search", f"--config={config}", f"--workdir={workdir}", *overrides])


def _saved_state(workdir, step):
  """The state saved at `step`, read without a template (plain nested dicts)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.StandardCheckpointer() as c:
    return c.restore(path)


def _assert_same_tree(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stopped_and_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path):
  """max_steps=2 then max_steps=4 in one workdir == one max_steps=4 run."""
  whole, split = tmp_path / "whole", tmp_path / "split"
  assert _search(tiny_config, whole, "--config.max_steps=4") == 0
  assert _search(tiny_config, split, "--config.max_steps=2") == 0
  first = json.loads((split / "alphas.json").read_text())
  assert _search(tiny_config, split, "--config.max_steps=4") == 0
  a_whole = json.loads((whole / "alphas.json").read_text())
  a_split = json.loads((split / "alphas.json").read_text())
  assert a_split != first  # the second run did train further
  for k in a_whole:
    np.testing.assert_array_equal(np.asarray(a_split[k]), np.asarray(a_whole[k]))
  # Every leaf of the state: params, alphas, both optimiser states, step, rng.
  _assert_same_tree(_saved_state(split, 4), _saved_state(whole, 4))
  # The log of the resumed run continues at step 3.
  rows = [json.loads(l) for l in (split / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
  # Only the last `keep` (3) checkpoints remain.
  kept = sorted(int(d) for d in os.listdir(split / "checkpoints") if d.isdigit())
  assert kept == [2, 3, 4]


def test_resuming_with_another_model_is_one_line_error(tiny_config, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert _search(tiny_config, workdir, "--config.max_steps=1") == 0
  capsys.readouterr()
  rc = _search(tiny_config, workdir, "--config.max_steps=2", "--config.model.init_channels=6")
  err = capsys.readouterr().err.strip()
  assert rc == 2
  # Refused from config.json before the checkpoint is read, naming the key.
  assert len(err.splitlines()) == 1, err
  assert "holds a run of another config (model.init_channels: 4 -> 6)" in err, err


def test_nan_loss_names_the_step_and_last_good_checkpoint(tiny_config, tmp_path, capsys):
  workdir = tmp_path / "run"
  # A huge learning rate without clipping overflows the weights within a few steps.
  rc = _search(tiny_config, workdir, "--config.max_steps=20", "--config.optim.grad_clip=1e30",
               "--config.optim.learning_rate=1e30", "--config.optim.learning_rate_min=1e30")
  err = capsys.readouterr().err.strip()
  assert rc == 1, err
  assert "Traceback" not in err, err
  err = err.splitlines()[-1]  # the lines before are the run's log
  assert err.startswith("jdarts search: error: loss became nan"), err
  assert "at step" in err and "last good checkpoint is step" in err, err
  bad_step = int(err.split("at step ")[1].split(";")[0])
  good = int(err.split("last good checkpoint is step ")[1].split(" ")[0])
  assert good < bad_step
  # The checkpoint it names exists and holds finite values.
  for leaf in jax.tree_util.tree_leaves(_saved_state(workdir, good)):
    assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64)))


def test_sigterm_saves_a_checkpoint_that_resumes(tiny_config, tmp_path):
  """A search killed by SIGTERM exits 143 with a checkpoint; a rerun continues from it."""
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "jdarts.cli", "search", f"--config={tiny_config}",
         f"--workdir={workdir}", "--config.max_steps=0", "--config.checkpoint.every_steps=0"]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and metrics.read_text().count("\n") >= 2:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert "run the same command again to resume" in err
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert steps, err
  stopped = steps[-1]
  assert stopped >= 2  # after the second logged step, not only epoch checkpoints
  # The rerun resumes from it: its log starts right after the saved step.
  assert cli.main(["search", f"--config={tiny_config}", f"--workdir={workdir}",
                   f"--config.max_steps={stopped + 1}"]) == 0
  rows = [json.loads(l) for l in metrics.read_text().splitlines()]
  train_steps = [r["step"] for r in rows if r["kind"] == "train"]
  assert train_steps[-1] == stopped + 1 and train_steps.count(stopped + 1) == 1
  assert train_steps == sorted(set(train_steps))
