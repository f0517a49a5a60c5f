"""`--config.num_seeds=K`: K searches in one program (issue 18).

The reference for every K-seed run is the same searches run one at a time:
search k of a K-seed run must end where `jdarts search --config.seed=<seed+k>`
ends (weights, alphas, logged losses, held-out accuracy), for every step kind;
a K-seed run stopped and resumed must equal an uninterrupted one; K seeds on
2 fake devices must equal K seeds on one. Most tests use the toy space of
tests/test_toy_space.py (a carry, dropout, its own metrics), whose programs
compile in about a second; the DARTS CNN runs behind --runslow.
"""
import json
import os

import numpy as np
import pytest

import helpers
import test_toy_space  # noqa: F401  (registers the toy space)
from jdarts import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def cache_small_programs():
  """Every run of this module persists even sub-second compiles (the toy's step and
  evaluation), so the many runs of one program here compile it once."""
  import jax
  from jdarts import runs
  old = jax.config.jax_persistent_cache_min_compile_time_secs
  enable = runs.enable_compilation_cache

  def enable_all(path):
    enable(path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(runs, "enable_compilation_cache", enable_all)
    yield
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  d = tmp_path_factory.mktemp("seeds")
  path = d / "toy.py"
  path.write_text(test_toy_space._CONFIG.format(
      tests_dir=os.path.dirname(helpers.__file__), cache=str(d / "xla_cache")))
  return str(path)


def _search(config, workdir, *args, checkpoints=False):
  # Without checkpoints and TensorBoard files where a test does not read them.
  quiet = () if checkpoints else ("--config.checkpoint.enabled=False",
                                  "--config.tensorboard=False")
  assert cli.main(["search", f"--config={config}", f"--workdir={workdir}",
                   "--config.report=False", *quiet, *args]) == 0


def _alphas(d):
  return json.loads((d / "alphas.json").read_text())


def _train_rows(d):
  rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if r["kind"] == "train"]


def _assert_same_search(a, b, rtol=1e-5, atol=1e-6):
  """Two search directories end with the same alphas, genotype, losses and accuracy."""
  for name, x in _alphas(a).items():
    np.testing.assert_allclose(np.asarray(x), np.asarray(_alphas(b)[name]), rtol=rtol,
                               atol=atol, err_msg=name)
  assert json.loads((a / "genotype.json").read_text()) == json.loads(
      (b / "genotype.json").read_text())
  ra, rb = _train_rows(a), _train_rows(b)
  assert [r["step"] for r in ra] == [r["step"] for r in rb]
  for x, y in zip(ra, rb):
    for k in ("train_loss", "val_loss", "grad_norm", "alpha_grad_norm", "param_norm"):
      np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=atol, err_msg=k)
  sa = json.loads((a / "summary.json").read_text())
  sb = json.loads((b / "summary.json").read_text())
  np.testing.assert_allclose(sa["test_loss"], sb["test_loss"], rtol=rtol, atol=atol)
  assert sa["test_accuracy"] == pytest.approx(sb["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("method", ["first_order", "exact_hvp", "single_level"])
def test_each_seed_equals_its_search_alone(toy, tmp_path, method, capsys):
  """Seed k of a 2-seed run is the run alone with seed = 3 + k, for every step kind.

  Seed index 1 (seed 4) is compared: it sees the offset, the stacking and the
  second slot of every batched value; index 0 only as well for first_order.
  """
  m = f"--config.arch.method={method}"
  _search(toy, tmp_path / "k2", m, "--config.num_seeds=2", "--config.seed=3",
          "--config.max_steps=3")
  out = capsys.readouterr().out
  for k in ((0, 1) if method == "first_order" else (1,)):
    _search(toy, tmp_path / f"alone{k}", m, f"--config.seed={3 + k}", "--config.max_steps=3")
    _assert_same_search(tmp_path / "k2" / f"seed_{k}", tmp_path / f"alone{k}")
  # Two different searches, not one twice.
  a0, a1 = (np.asarray(_alphas(tmp_path / "k2" / f"seed_{k}")["cell"]) for k in range(2))
  assert np.abs(a0 - a1).max() > 1e-4
  rows = json.loads((tmp_path / "k2" / "seeds.json").read_text())["seeds"]
  assert [(r["seed"], r["dir"]) for r in rows] == [(3, "seed_0"), (4, "seed_1")]
  table = (tmp_path / "k2" / "seeds.md").read_text()
  assert "| 3 | seed_0 |" in table and "n/a" in table  # the toy space counts no skips
  assert "seed 4: search_val_accuracy" in out


def test_k_seed_resume_equals_uninterrupted(toy, tmp_path):
  """2 steps, then a rerun to 4, ends bit for bit where one 4-step 2-seed run ends."""
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  k2 = "--config.num_seeds=2"
  _search(toy, whole, k2, "--config.max_steps=4")
  _search(toy, parts, k2, "--config.max_steps=2", checkpoints=True)
  half = _alphas(parts / "seed_1")["cell"]
  _search(toy, parts, k2, "--config.max_steps=4", checkpoints=True)
  for k in range(2):
    np.testing.assert_array_equal(np.asarray(_alphas(parts / f"seed_{k}")["cell"]),
                                  np.asarray(_alphas(whole / f"seed_{k}")["cell"]))
    same = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "images_per_sec")}
                       for r in rs]
    assert same(_train_rows(parts / f"seed_{k}")) == same(_train_rows(whole / f"seed_{k}"))
    assert [r["step"] for r in _train_rows(parts / f"seed_{k}")] == [2, 4]
  assert np.abs(np.asarray(half) - np.asarray(_alphas(parts / "seed_1")["cell"])).max() > 0


_DEVICES_COMMON = ("--config.num_seeds=2", "--config.max_steps=3",
                   "--config.model.dropout=0.0")  # dropout keys differ per device


@pytest.fixture(scope="module")
def two_seeds_one_device(toy, tmp_path_factory):
  d = tmp_path_factory.mktemp("one_device")
  _search(toy, d, *_DEVICES_COMMON)
  return d


@pytest.mark.parametrize("backend", ["pmap", pytest.param("shard_map",
                                                         marks=pytest.mark.slow)])
def test_seeds_times_devices_equal_seeds_on_one_device(toy, tmp_path, backend,
                                                       two_seeds_one_device):
  """2 seeds x 2 fake devices (carry split over devices) end as 2 seeds on one."""
  _search(toy, tmp_path / "two", *_DEVICES_COMMON, "--config.parallel.num_devices=2",
          f"--config.parallel.backend={backend}")
  for k in range(2):
    _assert_same_search(tmp_path / "two" / f"seed_{k}", two_seeds_one_device / f"seed_{k}",
                        rtol=2e-5, atol=2e-6)


def test_a_fixed_data_order_shares_one_input_pipeline(toy, tmp_path):
  """With data.seed=7 all seeds read one stream; seed k is the run alone with data.seed=7."""
  args = ("--config.data.seed=7", "--config.max_steps=3")
  _search(toy, tmp_path / "k2", *args, "--config.num_seeds=2", "--config.seed=0")
  _search(toy, tmp_path / "alone1", *args, "--config.seed=1")
  _assert_same_search(tmp_path / "k2" / "seed_1", tmp_path / "alone1")
  a0, a1 = (np.asarray(_alphas(tmp_path / "k2" / f"seed_{k}")["cell"]) for k in range(2))
  assert np.abs(a0 - a1).max() > 1e-4  # own weights, alphas and rng; same batches


def test_a_nan_loss_names_the_seed(tmp_path):
  """Per-seed metrics: the NaN stop names the seed (seed + k) that went non-finite."""
  from jdarts import runs
  cfg = helpers.tiny_search_config(seed=5, num_seeds=3)
  r = runs.Run(cfg, str(tmp_path), "search", finite_keys=("train_loss",), nan_hint="fix.")
  r._pending = [(4, {"train_loss": np.array([1.0, 2.0, np.nan], np.float32)})]
  with pytest.raises(runs.NonFiniteLossError, match=r"nan for seed\(s\) 7 .* at step 4"):
    r.flush()
  r._pending = [(5, {"train_loss": np.array([1.0, 2.0, 3.0], np.float32)})]
  assert len(r.flush()) == 1
  r.writer.close()


def test_train_takes_every_seeds_genotype(tmp_path):
  """`jdarts train --config.genotype=<K-seed workdir>` trains each seed's cell into seed_<k>/."""
  from jdarts import genotypes, seeds
  search = tmp_path / "search"
  cells = [genotypes.Genotype(normal=[(op, 0), ("skip_connect", 1)], normal_concat=[2],
                              reduce=[("max_pool_3x3", 0), ("avg_pool_3x3", 1)],
                              reduce_concat=[2]) for op in ("skip_connect", "max_pool_3x3")]
  for k, cell in enumerate(cells):
    (search / f"seed_{k}").mkdir(parents=True)
    genotypes.save_genotype(cell, str(search / f"seed_{k}" / "genotype.json"))
  seeds.write_summary(str(search), [{"seed": k, "dir": f"seed_{k}", "genotype": "",
                                     "skip_connect": 1.0} for k in range(2)], [])
  assert cli.main(["train", f"--config={REPO}/configs/train_quickstart.py",
                   f"--config.genotype={search}", f"--workdir={tmp_path / 'train'}",
                   "--config.model.init_channels=2", "--config.model.layers=1",
                   "--config.model.stem_multiplier=1", "--config.batch_size=8",
                   "--config.max_steps=1", "--config.progress=False",
                   "--config.parallel.num_devices=1", "--config.compilation_cache_dir=",
                   "--config.tensorboard=False"]) == 0
  for k, cell in enumerate(cells):
    d = tmp_path / "train" / f"seed_{k}"
    assert genotypes.load_genotype(str(d / "genotype.json")) == cell
    assert json.loads((d / "summary.json").read_text())["steps"] == 1
    assert json.loads((d / "config.json").read_text())["genotype"] == str(search / f"seed_{k}")


@pytest.mark.slow
def test_darts_cnn_seed_equals_its_search_alone(tmp_path):
  """The DARTS CNN space (BatchNorm, 8 operations): seed 1 of 2 is the run alone."""
  cfg = helpers.write_tiny_config(tmp_path, "c.max_steps = 2", "c.report = False")
  _search(cfg, tmp_path / "k2", "--config.num_seeds=2", "--config.seed=0")
  _search(cfg, tmp_path / "alone", "--config.seed=1")
  _assert_same_search(tmp_path / "k2" / "seed_1", tmp_path / "alone", rtol=1e-4, atol=1e-5)
  table = (tmp_path / "k2" / "seeds.md").read_text()
  assert "skip_connect" in table and "n/a" not in table
