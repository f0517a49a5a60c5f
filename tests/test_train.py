"""Training from scratch: cutout statistics, `jdarts train` end to end, multi-device step."""
import json
import os

import jax
import ml_collections
import numpy as np

from jdarts import cli, data, genotypes, models, optim, parallel, schedules, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = genotypes.Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[2],
    reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1)], reduce_concat=[2])


def test_cutout_masked_area_statistics():
  """Paper A.2.1 cutout (length 16 on 32x32): one clipped square per image.

  The reference centres the square at a uniform pixel (y, x) and zeroes rows
  [max(y-8, 0), min(y+8, 32)) x the same for columns, so the expected area is
  E[side]^2 with E[side] averaged over the 32 centre positions.
  """
  info = data.get_info("synthetic")
  source = data.make_synthetic(256, info.image_shape, seed=3)
  it = data.make_train_iterator(source, info, batch_size=64, seed=5, augment=False,
                                cutout=16)
  areas = []
  for _ in range(16):
    batch = next(it)
    zero = np.all(batch["image"] == 0.0, axis=-1)  # synthetic pixels are never 0
    for z in zero:
      rows, cols = np.nonzero(z.any(1))[0], np.nonzero(z.any(0))[0]
      # One axis-aligned rectangle, sides between 8 (centre at a border) and 16.
      assert z[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
      assert z.sum() == len(rows) * len(cols)
      assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
      areas.append(z.sum())
  centres = np.arange(32)
  side = np.minimum(centres + 8, 32) - np.maximum(centres - 8, 0)
  expected = side.mean() ** 2
  areas = np.asarray(areas, float)
  assert abs(areas.mean() - expected) < 4 * areas.std() / np.sqrt(len(areas))


def _tiny_train_config(tmp_path, **overrides):
  args = [f"--config={REPO}/configs/train_cifar10.py", f"--workdir={tmp_path / 'run'}",
          "--config.data.name=synthetic", "--config.model.init_channels=4",
          "--config.model.layers=1", "--config.model.auxiliary=False", "--config.batch_size=8", "--config.eval_batch_size=128",
          "--config.max_steps=4", "--config.log_every=2", "--config.progress=False",
          "--config.compilation_cache_dir=", "--config.parallel.num_devices=1"]
  return args + [f"--config.{k}={v}" for k, v in overrides.items()]


def test_train_end_to_end_from_a_search_workdir(tmp_path, capsys):
  search_dir = tmp_path / "search"
  search_dir.mkdir()
  genotypes.save_genotype(TINY, str(search_dir))  # as `jdarts search` leaves it
  args = _tiny_train_config(tmp_path, genotype=str(search_dir))
  # Progress on: captured stdout is no TTY, so the plain progress lines run
  # (a train loop once crashed there at its first log line).
  args += ["--config.data.valid_portion=0.1", "--config.progress=True"]
  rc = cli.main(["train"] + args)
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  assert " loss=" in captured.out and "step 4/4 (100%" in captured.out, captured.out
  run = tmp_path / "run"
  assert genotypes.load_genotype(str(run)) == genotypes.validate_genotype(TINY)
  s = json.loads((run / "summary.json").read_text())
  assert s["steps"] == 4
  for split in ("train", "valid", "test"):
    assert 0.0 <= s[f"{split}_accuracy"] <= 1.0
  net = models.build_model(dict(name="cifar", init_channels=4, layers=1, auxiliary=False), 10,
                           genotype=TINY)
  counts = models.count_params(models.abstract_variables(net, (32, 32, 3))["params"])
  assert s["params"] == s["params_total"] == counts["params"]
  rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if r["kind"] == "train"]
  assert [r["step"] for r in train_rows] == [2, 4]
  assert all(np.isfinite(r["loss"]) and r["aux_loss"] == 0.0 for r in train_rows)
  # 2048 synthetic examples, 10% held out, batch 8: drop-path ramps per epoch from 0.
  assert train_rows[0]["drop_path_prob"] == 0.0
  epoch = [r for r in rows if r["kind"] == "epoch"][0]
  assert {"valid_accuracy", "test_accuracy", "train_accuracy"} <= set(epoch)
  assert "test_accuracy" in captured.out


def test_two_devices_equal_one_device():
  """Same global batch, cross-replica BN, no drop-path: identical updates."""
  optim_cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, learning_rate_min=0.0,
                                         schedule="constant", momentum=0.9,
                                         weight_decay=3e-4, grad_clip=5.0))
  lr = schedules.make_schedule(optim_cfg, 1, 1)
  tx = optim.weight_optimizer(optim_cfg, lr)
  rng = np.random.RandomState(0)
  batch = {"image": rng.randn(4, 32, 32, 3).astype(np.float32),
           "label": np.arange(4, dtype=np.int32)}
  results = []
  for n in (1, 2):
    axis = parallel.AXIS if n > 1 else None
    # One cell (a reduction cell): enough to exercise every collective.
    net = models.build_model(dict(name="cifar", init_channels=4, layers=1, auxiliary=False),
                             10, genotype=TINY, bn_axis_name=axis)
    state = train.init_state(net, jax.random.PRNGKey(0), (32, 32, 3), tx)
    step = parallel.ParallelStep(
        train.make_train_step(net, tx, lr, lambda s: 0.0, axis_name=axis),
        backend="pmap" if n > 1 else "none", devices=jax.local_devices()[:n], num_batches=1)
    new, metrics = step(step.put_state(state), batch)
    results.append((step.get_state(new), step.get_metrics(metrics)))
  (a, ma), (b, mb) = results
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
  for x, y in zip(jax.tree_util.tree_leaves((a.params, a.batch_stats)),
                  jax.tree_util.tree_leaves((b.params, b.batch_stats))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)
