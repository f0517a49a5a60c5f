"""`jdarts search` end to end on a tiny config, and one-line errors for bad input."""
import json
import os

import numpy as np
import pytest

from jdarts import cli
from jdarts import experiment
from jdarts import genotypes
from jdarts.spaces.darts_cnn import derive as derive_lib
import helpers


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  return helpers.write_tiny_config(tmp_path_factory.mktemp("cfg"))


def test_search_end_to_end_writes_a_valid_genotype(tiny_config, tmp_path, capsys):
  """The CLI runs a 3-step search on digits and writes every promised output."""
  workdir = tmp_path / "run"
  rc = cli.main(["search", f"--config={tiny_config}", f"--workdir={workdir}",
                 "--config.max_steps=3"])
  assert rc == 0
  out = capsys.readouterr().out
  assert "supernet test accuracy" in out and "supernet search_val accuracy" in out
  g = json.loads((workdir / "genotype.json").read_text())
  assert set(g) == {"normal", "normal_concat", "reduce", "reduce_concat"}
  genotype = genotypes.genotype_from_json(g)  # validates ops and input indices
  assert len(genotype.normal) == 2 and genotype.normal_concat == [2]
  assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
  alphas = json.loads((workdir / "alphas.json").read_text())
  assert set(alphas) == {"normal", "reduce"}
  assert np.asarray(alphas["normal"]).shape == (2, 4)
  # The alphas moved away from their zero initialisation.
  assert np.abs(np.asarray(alphas["normal"])).max() > 1e-4
  # The derived genotype is the derivation of the saved alphas.
  again = derive_lib.derive(np.asarray(alphas["normal"]), np.asarray(alphas["reduce"]),
                            ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                            steps=1, multiplier=1)
  assert genotypes.genotype_to_json(again) == g
  cfg = json.loads((workdir / "config.json").read_text())
  assert cfg["max_steps"] == 3 and cfg["data"]["name"] == "digits"
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
  final = [r for r in rows if r["kind"] == "final"][0]
  assert 0.0 <= final["test_accuracy"] <= 1.0
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 3


def _error(args, capsys):
  rc = cli.main(args)
  err = capsys.readouterr().err.strip()
  assert rc == 2, err
  assert len(err.splitlines()) == 1, err  # one line, no traceback
  return err


def test_unknown_config_key_is_one_line(tiny_config, tmp_path, capsys):
  """A typo in a --config override is named."""
  err = _error(["search", f"--config={tiny_config}", f"--workdir={tmp_path}",
                "--config.batch_sise=4"], capsys)
  assert "batch_sise" in err


def test_workdir_that_is_a_file_is_one_line(tiny_config, tmp_path, capsys):
  """A workdir path that is a file is refused before any work."""
  f = tmp_path / "afile"
  f.write_text("x")
  err = _error(["search", f"--config={tiny_config}", f"--workdir={f}"], capsys)
  assert "not a directory" in err and str(f) in err


def test_missing_dataset_is_one_line_with_the_fix(tiny_config, tmp_path, capsys):
  """CIFAR-10 absent from data_dir: the error names the directory and the command."""
  empty = tmp_path / "no_data"
  empty.mkdir()
  err = _error(["search", f"--config={tiny_config}", f"--workdir={tmp_path / 'w'}",
                "--config.data.name=cifar10", f"--config.data.data_dir={empty}"], capsys)
  assert "tfds build cifar10" in err and str(empty) in err


def test_unknown_operation_is_one_line(tiny_config, tmp_path, capsys):
  """An unknown primitive names the known operations."""
  err = _error(["search", f"--config={tiny_config}", f"--workdir={tmp_path}",
                "--config.model.primitives=('none','sep_conv_9x9')"], capsys)
  assert "sep_conv_9x9" in err and "sep_conv_3x3" in err


def test_unknown_method_and_command(tiny_config, tmp_path, capsys):
  """Unknown arch method and unknown command are one-line errors naming the choices."""
  err = _error(["search", f"--config={tiny_config}", f"--workdir={tmp_path}",
                "--config.arch.method=zeroth"], capsys)
  assert "zeroth" in err and "exact_hvp" in err
  err = _error(["serch"], capsys)
  assert "serch" in err and "search" in err


def test_config_files_load_and_validate():
  """Every shipped search config builds and passes validation (train_* configs: test_models)."""
  import importlib.util
  from jdarts import config_lib
  root = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
  names = sorted(f for f in os.listdir(root) if f.endswith(".py"))
  assert "quickstart.py" in names and "search_cifar10_darts.py" in names
  for name in names:
    if name.startswith("train_"):
      continue
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(root, name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    experiment.validate(mod.get_config())
