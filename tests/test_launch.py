"""The launch/ scripts: valid bash, fail fast naming a missing variable, run the right command.

gcloud, srun and python3 are replaced by stubs that record their arguments, so
nothing is launched (and whether the real tools are installed does not matter).
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = ("tpu_pod.sh", "slurm_gpu.sbatch", "local_multigpu.sh")
BASH = shutil.which("bash")

# Appends one record per call: its arguments, then JDARTS_DISTRIBUTED, then "@@".
_STUB = """#!{bash}
{{ for a in "$@"; do printf '%s\\n' "$a"; done;
  echo "JDARTS_DISTRIBUTED=${{JDARTS_DISTRIBUTED:-}}"; echo "@@"; }} >> "{log}/$(basename "$0").log"
"""


@pytest.fixture
def stubs(tmp_path):
  """A PATH whose gcloud, srun and python3 only log their arguments; returns (env, logs)."""
  bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
  bin_dir.mkdir()
  logs.mkdir()
  for tool in ("gcloud", "srun", "python3"):
    path = bin_dir / tool
    path.write_text(_STUB.format(bash=BASH, log=logs))
    path.chmod(0o755)
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
  return env, logs


def _run(script, env, *args):
  return subprocess.run([BASH, os.path.join(LAUNCH, script), *args], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=30)


def _calls(logs, tool):
  """The argument lists (plus JDARTS_DISTRIBUTED=...) of every call of a stub."""
  path = logs / f"{tool}.log"
  if not path.exists():
    return []
  return [c.strip("\n").split("\n") for c in path.read_text().split("@@\n") if c.strip()]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  path = os.path.join(LAUNCH, script)
  subprocess.run([BASH, "-n", path], check=True, timeout=30)
  with open(path) as f:
    text = f.read()
  assert text.startswith("#!") and "set -euo pipefail" in text
  assert os.access(path, os.X_OK)


@pytest.mark.parametrize("script,given,missing", [
    ("tpu_pod.sh", {}, "set TPU_NAME"),
    ("tpu_pod.sh", dict(TPU_NAME="t"), "set ZONE"),
    ("tpu_pod.sh", dict(TPU_NAME="t", ZONE="z"), "set CONFIG"),
    ("tpu_pod.sh", dict(TPU_NAME="t", ZONE="z", CONFIG="c.py"), "set WORKDIR"),
    ("tpu_pod.sh", dict(TPU_NAME="t", ZONE="z", CONFIG="c.py", WORKDIR="w", CREATE="1"),
     "set ACCELERATOR_TYPE"),
    ("slurm_gpu.sbatch", {}, "set CONFIG"),
    ("slurm_gpu.sbatch", dict(CONFIG="c.py"), "set WORKDIR"),
    ("slurm_gpu.sbatch", dict(CONFIG="c.py", WORKDIR="w"), "submit this script with sbatch"),
    ("local_multigpu.sh", {}, "set CONFIG"),
    ("local_multigpu.sh", dict(CONFIG="c.py"), "set WORKDIR"),
])
def test_missing_variable_fails_fast(stubs, script, given, missing):
  env, logs = stubs
  r = _run(script, dict(env, **given))
  assert r.returncode != 0
  assert missing in r.stderr
  assert not any(logs.iterdir()), "a tool ran before the variables were checked"


def test_tpu_pod_runs_the_search_on_all_workers(stubs):
  env, logs = stubs
  r = _run("tpu_pod.sh", dict(env, TPU_NAME="darts-v4-32", ZONE="us-central2-b",
                              CONFIG="configs/search_cifar10_darts.py:debug",
                              WORKDIR="/mnt/runs/a b", REPO_URL="https://example.com/j.git",
                              REPO_REF="main", PROJECT="proj"),
           "--config.epochs=2")
  assert r.returncode == 0, r.stderr
  (args,) = _calls(logs, "gcloud")
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "darts-v4-32"]
  assert "--worker=all" in args and "us-central2-b" in args and "proj" in args
  remote = args[args.index("--command") + 1]
  assert "git clone -q https://example.com/j.git jdarts" in remote
  assert "pip install -q -e '.[tpu]'" in remote
  assert remote.endswith("export JDARTS_DISTRIBUTED=1; python3 -m jdarts.cli search "
                         "--config=configs/search_cifar10_darts.py:debug "
                         "--workdir=/mnt/runs/a\\ b --config.epochs=2")
  subprocess.run([BASH, "-n", "-c", remote], check=True, timeout=30)


def test_tpu_pod_create(stubs):
  env, logs = stubs
  r = _run("tpu_pod.sh", dict(env, TPU_NAME="t", ZONE="z", CONFIG="c.py", WORKDIR="w",
                              CREATE="1", ACCELERATOR_TYPE="v4-32", INSTALL="0"))
  assert r.returncode == 0, r.stderr
  create, ssh = _calls(logs, "gcloud")
  assert create[:8] == ["compute", "tpus", "tpu-vm", "create", "t", "--zone", "z",
                        "--accelerator-type"]
  assert create[8:11] == ["v4-32", "--version", "tpu-ubuntu2204-base"]
  assert ssh[:4] == ["compute", "tpus", "tpu-vm", "ssh"]
  assert "git clone" not in ssh[ssh.index("--command") + 1]  # INSTALL=0


def test_slurm_runs_one_srun(stubs):
  env, logs = stubs
  r = _run("slurm_gpu.sbatch", dict(env, CONFIG="c.py", WORKDIR="/shared/w", SLURM_JOB_ID="7",
                                    SLURM_NTASKS="16", JDARTS_DIR=ROOT), "--config.seed=3")
  assert r.returncode == 0, r.stderr
  assert _calls(logs, "srun") == [["--kill-on-bad-exit=1", "python3", "-m", "jdarts.cli",
                                   "search", "--config=c.py", "--workdir=/shared/w",
                                   "--config.seed=3", "JDARTS_DISTRIBUTED="]]


def test_local_multigpu_runs_one_process(stubs):
  env, logs = stubs
  r = _run("local_multigpu.sh", dict(env, CONFIG="c.py", WORKDIR="w", DATA_DIR="/data"),
           "--config.batch_size=64")
  assert r.returncode == 0, r.stderr
  assert _calls(logs, "python3") == [["-m", "jdarts.cli", "search", "--config=c.py",
                                      "--workdir=w", "--config.data.data_dir=/data",
                                      "--config.batch_size=64", "JDARTS_DISTRIBUTED=0"]]
