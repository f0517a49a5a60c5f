"""Workdir faults, a full disk during a checkpoint, and the CLI's guard for unexpected errors."""
import errno
import json
import os
import shutil
import subprocess

import pytest

from jdarts import cli
from jdarts import runs
from jdarts.config_lib import ConfigError
import helpers


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  return helpers.write_tiny_config(tmp_path_factory.mktemp("cfg"))


def _one_line(capsys, rc, want_rc=2):
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert rc == want_rc, err
  assert len(err) == 1, err
  return err[0]


def _immutable(path):
  """Makes directory `path` unwritable, even for root (chattr +i); yields, then undoes it."""
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    return lambda: os.chmod(path, 0o755)
  if shutil.which("chattr") is None:
    pytest.skip("root ignores permission bits and chattr is missing")
  r = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
  if r.returncode != 0:
    pytest.skip(f"chattr +i is not supported here: {r.stderr.decode().strip()}")
  return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_unwritable_workdir_is_one_line(tiny_config, tmp_path, capsys):
  """An existing directory where no file can be created is refused before any work."""
  wd = tmp_path / "locked"
  wd.mkdir()
  undo = _immutable(wd)
  try:
    err = _one_line(capsys, cli.main(["search", f"--config={tiny_config}",
                                      f"--workdir={wd}"]))
  finally:
    undo()
  assert "is not writable" in err and str(wd) in err
  assert os.listdir(wd) == []


def test_workdir_of_another_experiment_is_refused_and_safe_changes_resume(tmp_path):
  """config.json differing in model/space/data is refused; max_steps, log_every, progress are not."""
  cfg = helpers.tiny_search_config()
  old = json.loads(cfg.to_json_best_effort())
  (tmp_path / "config.json").write_text(json.dumps(old))
  # No results yet: a workdir of a run that stopped before its first step is reused.
  other = dict(old, space="toy", model=dict(old["model"], init_channels=8))
  runs.check_same_experiment(str(tmp_path), other)
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  with pytest.raises(ConfigError) as e:
    runs.check_same_experiment(str(tmp_path), other)
  msg = str(e.value)
  assert "model.init_channels: 4 -> 8" in msg and "space: 'darts_cnn' -> 'toy'" in msg
  assert "new --workdir" in msg and "\n" not in msg
  data = dict(old, data=dict(old["data"], name="cifar10"))
  with pytest.raises(ConfigError, match="data.name: 'digits' -> 'cifar10'"):
    runs.check_same_experiment(str(tmp_path), data)
  safe = dict(old, max_steps=100, log_every=7, progress=True,
              checkpoint=dict(old["checkpoint"], keep=9))
  runs.check_same_experiment(str(tmp_path), safe)  # resumable: no error


def test_unexpected_error_is_one_line_plus_a_log_file(tiny_config, tmp_path, capsys,
                                                      monkeypatch):
  """A bug deep inside: one line naming the log file; the log (and --debug) hold the traceback."""
  from jdarts import experiment

  def broken(*args, **kwargs):
    raise RuntimeError("simulated bug\nsecond line")
  monkeypatch.setattr(experiment, "build_data", broken)
  wd = tmp_path / "run"
  err = _one_line(capsys, cli.main(["search", f"--config={tiny_config}", f"--workdir={wd}"]),
                  want_rc=3)
  log = wd / "jdarts-error.log"
  assert "unexpected error: RuntimeError: simulated bug second line" in err
  assert str(log) in err
  text = log.read_text()
  assert "Traceback (most recent call last)" in text and "def broken" not in err
  assert "in broken" in text and "simulated bug" in text
  rc = cli.main(["search", f"--config={tiny_config}", f"--workdir={wd}", "--debug"])
  lines = capsys.readouterr().err.splitlines()
  assert rc == 3 and "Traceback (most recent call last)" in lines[1]
  # Without a workdir (summary), the traceback goes to a temporary file.
  from jdarts import summary
  monkeypatch.setattr(summary, "summarize", broken)
  err = _one_line(capsys, cli.main(["summary", f"--config={tiny_config}"]), want_rc=3)
  path = err.split("full traceback in ")[1].split(" ")[0]
  assert os.path.isfile(path) and "simulated bug" in open(path).read()
  os.remove(path)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tiny_config, tmp_path, capsys,
                                                             monkeypatch):
  """ENOSPC inside the write of step 2: one line, exit 1, step 1 intact, a rerun resumes it."""
  import orbax.checkpoint as ocp
  from jdarts import checkpoint as ckpt_lib
  orig = ocp.JsonCheckpointHandler.async_save
  calls = []

  async def full_disk(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint's write: the disk is full
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return await orig(self, *args, **kwargs)
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", full_disk)
  wd = tmp_path / "run"
  args = ["search", f"--config={tiny_config}", f"--workdir={wd}",
          "--config.checkpoint.every_steps=1", "--config.max_steps=3"]
  rc = cli.main(args)
  err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
  assert rc == 1, err
  assert len(err) == 1 and "could not write the checkpoint of step 2" in err[0], err
  assert "No space left on device" in err[0]
  assert "checkpoint of step 1 is intact" in err[0]
  ck = ckpt_lib.Checkpointer(str(wd / "checkpoints"))
  assert ck.all_steps() == [1]
  ck.close()
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", orig)  # space freed
  assert cli.main(args) == 0
  assert "resuming from the checkpoint of step 1" in capsys.readouterr().err
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
