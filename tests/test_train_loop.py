"""`jdarts train`: exact resume, preemption, NaN stop, held-out sets, bfloat16.

As tests/test_resume.py for the search: a run stopped after 2 steps and
resumed to 4 must end in the state, leaf for leaf (weights, BatchNorm running
averages, momentum, step, RNG), of one 4-step run. The network is a one-cell
evaluation network on 8x8 digits, so each run compiles in seconds.
"""
import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jdarts import (cli, config_lib, data, genotypes, models, optim, runs, schedules,
                    search_loop, train, train_loop)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = genotypes.Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[2],
    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1)], reduce_concat=[2])


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
  d = tmp_path_factory.mktemp("train_loop")
  genotypes.save_genotype(TINY, str(d / "genotype.json"))
  # One reduction cell, 4 channels; drop-path on (constant), so the RNG matters.
  return [f"--config={REPO}/configs/train_quickstart.py",
          f"--config.genotype={d / 'genotype.json'}", "--config.model.init_channels=4",
          "--config.model.layers=1", "--config.model.stem_multiplier=1",
          "--config.model.drop_path_prob=0.2", "--config.drop_path_schedule=constant",
          "--config.batch_size=8", "--config.epochs=1", "--config.log_every=1",
          "--config.progress=False", "--config.checkpoint.every_steps=1",
          f"--config.compilation_cache_dir={d / 'xla_cache'}",
          "--config.parallel.num_devices=1"]


def _train(args, workdir, *overrides):
  return cli.main(["train", *args, f"--workdir={workdir}", *overrides])


def _saved_state(workdir, step):
  """The state saved at `step`, read without a template (plain nested dicts)."""
  with ocp.StandardCheckpointer() as c:
    return c.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _rows(workdir, kind):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_stopped_and_resumed_run_equals_uninterrupted_run(tiny_args, tmp_path):
  whole, split = tmp_path / "whole", tmp_path / "split"
  assert _train(tiny_args, whole, "--config.max_steps=4") == 0
  assert _train(tiny_args, split, "--config.max_steps=2") == 0
  assert _train(tiny_args, split, "--config.max_steps=4") == 0
  a, b = _saved_state(whole, 4), _saved_state(split, 4)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  assert set(a) == {"step", "params", "batch_stats", "opt_state", "rng"}
  assert jax.tree_util.tree_leaves(a["batch_stats"])  # BN running averages are saved
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(  # the resumed run did train further
      jax.tree_util.tree_leaves(_saved_state(split, 2)["params"])[0],
      jax.tree_util.tree_leaves(b["params"])[0])
  # The log continues at step 3; the epoch's running means and the final
  # evaluation are those of the uninterrupted run.
  assert [r["step"] for r in _rows(split, "train")] == [1, 2, 3, 4]
  s_whole = json.loads((whole / "summary.json").read_text())
  s_split = json.loads((split / "summary.json").read_text())
  for k in ("train_loss", "train_accuracy", "test_accuracy", "test_loss"):
    assert s_whole[k] == s_split[k], k
  assert sorted(int(d) for d in os.listdir(split / "checkpoints") if d.isdigit()) == [2, 3, 4]
  # Only the resolved genotype is written, whatever --config.genotype was.
  assert genotypes.load_genotype(str(split)) == genotypes.validate_genotype(TINY)


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(tiny_args, tmp_path, monkeypatch,
                                                        capsys):
  """SIGTERM after step 2: exit 143 with a checkpoint of step 2; a rerun continues."""
  workdir = tmp_path / "run"
  write = runs.MetricsWriter.write

  def write_then_signal(self, step, kind, values):
    write(self, step, kind, values)
    if kind == "train" and step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's PreemptionFlag
  monkeypatch.setattr(runs.MetricsWriter, "write", write_then_signal)
  rc = _train(tiny_args, workdir, "--config.max_steps=0", "--config.checkpoint.every_steps=0")
  err = capsys.readouterr().err
  assert rc == 128 + signal.SIGTERM, err
  assert "run the same command again to resume" in err
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert steps == [2], steps
  monkeypatch.setattr(runs.MetricsWriter, "write", write)
  assert _train(tiny_args, workdir, "--config.max_steps=3") == 0
  assert [r["step"] for r in _rows(workdir, "train")] == [1, 2, 3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
      signal.getsignal(signal.SIGTERM))


def test_nan_loss_names_the_step_and_last_good_checkpoint(tiny_args, tmp_path, capsys):
  workdir = tmp_path / "run"
  rc = _train(tiny_args, workdir, "--config.max_steps=20", "--config.optim.grad_clip=0",
              "--config.optim.learning_rate=1e30", "--config.optim.schedule=constant")
  err = capsys.readouterr().err.strip()
  assert rc == 1, err
  assert "Traceback" not in err, err
  err = err.splitlines()[-1]
  assert err.startswith("jdarts train: error: loss became"), err
  bad = int(err.split("at step ")[1].split(";")[0])
  good = int(err.split("last good checkpoint is step ")[1].split(" ")[0])
  assert good < bad
  assert os.path.isdir(workdir / "checkpoints" / str(good))
  assert not os.path.isdir(workdir / "checkpoints" / str(bad))


def _train_config(**overrides):
  """configs/train_cifar10.py with dotted-key overrides."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "train_cifar10", os.path.join(REPO, "configs", "train_cifar10.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for k, v in overrides.items():
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  return c


def test_held_out_sets_are_the_test_split_and_cifar10_1(tmp_path):
  """'test' is the dataset's test split; data.extra_test_sets adds CIFAR-10.1 (tfds)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  assert _train_config().data.test_split == "test"
  calls = []

  def spy(split, data_dir):  # CIFAR-10 shaped, records which split was read
    calls.append(split)
    return data.make_synthetic({"train": 32, "test": 24}[split], seed=len(calls))
  info = dataclasses.replace(data.get_info("cifar10"), name="spy10")
  data.register_dataset("spy10", spy, info, overwrite=True)
  try:
    c = _train_config(**{"data.name": "spy10", "data.extra_test_sets": "cifar10_1",
                         "data.data_dir": str(tmp_path), "batch_size": 8})
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
      _, got_info, sources = train_loop.build_data(c)
      assert got_info is info and calls == ["train", "test"]
      assert set(sources) == {"test", "cifar10_1"}
      assert len(sources["test"]) == 24 and len(sources["cifar10_1"]) == 6
      batch = next(data.make_eval_iterator(sources["cifar10_1"], info, batch_size=4))
      assert batch["image"].shape == (4, 32, 32, 3)
    c = _train_config(**{"data.name": "digits", "data.extra_test_sets": "cifar10_1"})
    with pytest.raises(config_lib.ConfigError, match="cifar10_1 has"):
      train_loop.build_data(c)
  finally:
    del data.DATASETS["spy10"]
  c = _train_config(**{"data.extra_test_sets": "cifar10_2"})
  with pytest.raises(config_lib.ConfigError, match="'cifar10_2'.*unknown"):
    from jdarts import train_config
    train_config.validate(c)


def test_bfloat16_loss_is_close_to_float32_at_init():
  """Mixed precision: same float32 weights, bf16 compute, float32 loss and updates."""
  optim_cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, learning_rate_min=0.0,
                                         schedule="constant", momentum=0.9,
                                         weight_decay=3e-4, grad_clip=5.0))
  lr = schedules.make_schedule(optim_cfg, 1, 1)
  tx = optim.weight_optimizer(optim_cfg, lr)
  rng = np.random.RandomState(0)
  batch = {"image": rng.randn(16, 8, 8, 1).astype(np.float32),
           "label": rng.randint(0, 10, 16).astype(np.int32)}
  cfg = dict(name="cifar", init_channels=4, layers=1, auxiliary=False, stem_multiplier=1)
  out = {}
  state = None
  for dtype in ("float32", "bfloat16"):
    net = models.build_model(dict(cfg, dtype=dtype), 10, genotype=TINY)
    # The bf16 network's weights are float32 too: the same initial state serves both.
    shapes = models.abstract_variables(net, (8, 8, 1))
    assert {x.dtype for x in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
    if state is None:
      state = train.init_state(net, jax.random.PRNGKey(0), (8, 8, 1), tx)
    step = jax.jit(train.make_train_step(net, tx, lr, lambda s: 0.0))
    new, metrics = step(state, batch)
    out[dtype] = (new, jax.device_get(metrics))
  (n32, m32), (n16, m16) = out["float32"], out["bfloat16"]
  for x in jax.tree_util.tree_leaves((n16.params, n16.batch_stats, n16.opt_state)):
    assert x.dtype in (jnp.float32, jnp.int32), x.dtype
  assert m16["loss"].dtype == np.float32
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)
  np.testing.assert_allclose(m16["grad_norm"], m32["grad_norm"], rtol=1e-1)
  assert abs(m16["loss"] - m32["loss"]) > 0  # bf16 did change the arithmetic
