"""SIGKILL at random moments: every restart resumes and the result is an uninterrupted run's.

Each campaign runs `jdarts search` (or `jdarts train`) once without faults
(the reference), then, in another workdir, starts the same command again and
again through `tests/fault_runner.py` (checkpoint writes slowed by
JDARTS_TEST_SAVE_DELAY, so the write window is wide) and kills it with
SIGKILL. A seeded `random.Random` picks, per trial, one of three moments:

* 'startup': a random time in the first seconds (imports, data, compilation);
* 'step': a random time just after a new checkpoint was committed (steps run);
* 'write': a random time just after a checkpoint's temporary directory
  appeared, i.e. inside orbax's write of that step.

After every kill it checks that the newest committed step never goes back,
and that the restart logged 'resuming from the checkpoint of step N' with N
the newest committed step before it. Finally the command runs to the end
(no corrupt or half-written checkpoint may block it) and its outputs must
equal the reference's bit for bit: the alphas (search) or the final saved
state and summary (train), and the metrics log holds each step once.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
RUNNER = os.path.join(TESTS, "fault_runner.py")
POLL_S = 0.02


def _env():
  env = dict(os.environ, JDARTS_TEST_SAVE_DELAY="0.5", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS, env.get("PYTHONPATH", "")])
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  return env


def _committed(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _writing(workdir):
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any(".orbax-checkpoint-tmp" in n for n in os.listdir(d))


def _wait_for(proc, cond, timeout):
  """Polls `cond()` until true (True), the process exits or `timeout` passes (False)."""
  end = time.time() + timeout
  while time.time() < end and proc.poll() is None:
    if cond():
      return True
    time.sleep(POLL_S)
  return False


def _campaign(args, tmp_path, trials, seed):
  """Runs the reference and the killed runs; returns (ref workdir, killed workdir, log)."""
  env = _env()
  ref = tmp_path / "reference"
  out = subprocess.run([sys.executable, RUNNER, *args, f"--workdir={ref}"], env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  work = tmp_path / "killed"
  rng = random.Random(seed)
  kinds = ["startup", "step", "write"]
  record = []
  for trial in range(trials):
    kind = kinds[trial % 3] if trial < 3 else rng.choice(kinds)
    before = _committed(work)
    latest = before[-1] if before else 0
    log_path = tmp_path / f"trial{trial}.log"
    with open(log_path, "w") as log:
      proc = subprocess.Popen([sys.executable, RUNNER, *args, f"--workdir={work}"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
      if kind == "startup":
        _wait_for(proc, lambda: False, rng.uniform(0.5, 12.0))
      elif kind == "step":
        _wait_for(proc, lambda: (_committed(work) or [0])[-1] > latest, 300)
        _wait_for(proc, lambda: False, rng.uniform(0.0, 0.3))
      else:
        # After the first step: a temporary directory left by an earlier kill
        # is removed when the run opens its checkpoints, before stepping.
        _wait_for(proc, lambda: "first step" in log_path.read_text() and _writing(work), 300)
        _wait_for(proc, lambda: False, rng.uniform(0.0, 0.2))
      finished = proc.poll() is not None
      if not finished:
        proc.send_signal(signal.SIGKILL)
      rc = proc.wait(timeout=60)
    text = log_path.read_text()
    after = _committed(work)
    newest = after[-1] if after else 0
    assert newest >= latest, f"trial {trial}: newest step went back {latest} -> {newest}"
    resumed = re.findall(r"resuming from the checkpoint of step (\d+)", text)
    if latest:  # a restart that got as far as the restore resumed from the newest step
      assert resumed in ([], [str(latest)]), (trial, resumed, latest)
    assert "Traceback" not in text, text[-3000:]
    record.append(dict(trial=trial, kind=kind, killed=not finished, rc=rc, before=latest,
                       after=newest, tmp_left=_writing(work),
                       compiled="first step" in text, resumed=resumed))
    if finished:
      assert rc == 0, text[-3000:]
  out = subprocess.run([sys.executable, RUNNER, *args, f"--workdir={work}"], env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  for r in record:
    print(r)
  return ref, work, record


def _train_steps(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["step"] for r in rows if r["kind"] == "train"]


def _check_campaign(record, trials):
  assert len(record) == trials
  kinds = {r["kind"] for r in record}
  assert kinds == {"startup", "step", "write"}
  assert any(r["killed"] and not r["compiled"] for r in record), "no kill before step 1"
  assert any(r["killed"] and r["tmp_left"] for r in record), "no kill inside a write"


@pytest.mark.slow
def test_search_survives_sigkill_at_random_moments(tmp_path):
  """10 SIGKILLs of `jdarts search`; the final alphas equal an uninterrupted run's."""
  steps = 12
  cfg = helpers.write_tiny_config(tmp_path, "c.checkpoint.every_steps = 1",
                                  f"c.max_steps = {steps}")
  ref, work, record = _campaign(["search", f"--config={cfg}"], tmp_path, 10, seed=12)
  _check_campaign(record, 10)
  assert (work / "alphas.json").read_text() == (ref / "alphas.json").read_text()
  assert (work / "genotype.json").read_text() == (ref / "genotype.json").read_text()
  assert _train_steps(work) == list(range(1, steps + 1))


@pytest.mark.slow
def test_train_survives_sigkill_at_random_moments(tmp_path):
  """10 SIGKILLs of `jdarts train`; the final state equals an uninterrupted run's."""
  import orbax.checkpoint as ocp
  from jdarts import genotypes
  g = genotypes.Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[2],
                         reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1)], reduce_concat=[2])
  genotypes.save_genotype(g, str(tmp_path / "genotype.json"))
  steps = 12
  args = ["train", f"--config={REPO}/configs/train_quickstart.py",
          f"--config.genotype={tmp_path / 'genotype.json'}", "--config.model.init_channels=4",
          "--config.model.layers=1", "--config.model.stem_multiplier=1",
          "--config.model.drop_path_prob=0.2", "--config.drop_path_schedule=constant",
          "--config.batch_size=8", "--config.epochs=1", "--config.log_every=1",
          "--config.progress=False", "--config.checkpoint.every_steps=1",
          f"--config.max_steps={steps}",
          f"--config.compilation_cache_dir={tmp_path / 'xla_cache'}"]
  ref, work, record = _campaign(args, tmp_path, 10, seed=12)
  _check_campaign(record, 10)
  with ocp.StandardCheckpointer() as c:
    a = c.restore(os.path.join(ref, "checkpoints", str(steps), "state"))
    b = c.restore(os.path.join(work, "checkpoints", str(steps), "state"))
  import jax
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  s_ref = json.loads((ref / "summary.json").read_text())
  s_work = json.loads((work / "summary.json").read_text())
  for k in ("train_loss", "train_accuracy", "test_accuracy", "test_loss"):
    assert s_ref[k] == s_work[k], k
  assert _train_steps(work) == list(range(1, steps + 1))
