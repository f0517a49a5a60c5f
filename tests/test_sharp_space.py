"""The 'sharp' and 'sharp_sep_conv_darts' spaces and their evaluation networks.

Published sizes are the independent reference: sharp_darts.txt Table 2 gives
1.98M parameters for sharpDARTS and 3.6M for SharpSepConvDARTS (CIFAR-10
network: 20 cells, C=36, auxiliary head excluded), and the reference's own
training log of DARTS_V2 with SharpSepConv ops ("DARTS+SSC, no search",
ahundt/sharpDARTS cnn/genotypes.py) prints "param size = 3.529270MB"; Table 3
gives the ImageNet networks' sizes.
"""
import jax
import numpy as np
import pytest

import helpers
from jdarts import cli
from jdarts import config_lib
from jdarts import models
from jdarts import spaces
from jdarts.spaces.sharp import primitives

TINY_SHARP = ("none", "max_pool_3x3", "skip_connect", "choke_conv_3x3")


def _params(genotype, name="sharp_cifar"):
  net = models.build_model(dict(name=name, genotype=genotype), 10)
  return models.count_params(models.abstract_variables(net, (32, 32, 3))["params"])["params"]


def test_evaluation_networks_match_published_sizes():
  assert _params("DARTS_V2") == 3_529_270                  # reference log, DARTS+SSC
  sharp = _params("SHARP_DARTS")
  assert abs(sharp - 1.98e6) / 1.98e6 < 0.005               # Table 2: 1.98M
  assert round(_params("SHARPSEPCONV_DARTS") / 1e6, 1) == 3.6   # Table 2: 3.6M
  assert _params("DARTS_V2", "cifar") == 3_349_342          # the DARTS ops are untouched


def test_imagenet_networks_match_table3():
  """Table 3: sharpDARTS (cmid 32) 3.17M, SharpSepConvDARTS 4.9M (14 cells, C=48)."""
  def count(g):
    net = models.build_model(dict(name="sharp_imagenet", genotype=g), 1000)
    v = models.abstract_variables(net, (224, 224, 3))
    return models.count_params(v["params"])["params"]
  assert round(count("SHARP_DARTS") / 1e6, 2) == 3.17          # 3,173,440
  assert abs(count("SHARPSEPCONV_DARTS") - 4.9e6) / 4.9e6 < 0.02  # 4,973,728


def test_spaces_are_darts_cells_over_the_sharp_namespace():
  s = helpers.make_space(helpers.tiny_model(primitives=TINY_SHARP), space="sharp")
  assert s.alpha_shape == (2, 4)
  default = spaces.space_class("sharp")
  assert default.default_primitives == primitives.PRIMITIVES
  assert spaces.space_class("sharp_sep_conv_darts").default_primitives == \
      primitives.DARTS_PRIMITIVES
  for name in ("sharp", "sharp_sep_conv_darts"):
    assert name in spaces.BUILTIN
  # the default model block of each space: every alpha column an op of the namespace
  full = helpers.make_space({}, space="sharp")
  assert full.alpha_shape == (14, 10)
  ssc = helpers.make_space({}, space="sharp_sep_conv_darts")
  assert ssc.alpha_shape == (14, 8)


def test_config_errors_name_the_key():
  with pytest.raises(config_lib.ConfigError, match="model.primitives has unknown operation "
                     "'flod_conv_3x3' \\(did you mean 'flood_conv_3x3'\\?\\)"):
    spaces.space_class("sharp").validate_config({"primitives": ("none", "flod_conv_3x3")})
  with pytest.raises(config_lib.ConfigError, match="model.batch_edges"):
    spaces.space_class("sharp").validate_config({"batch_edges": True})
  spaces.space_class("sharp").validate_config({"mixing": "max_w"})


def test_supernet_uses_sharp_sep_conv_blocks():
  s = helpers.make_space(helpers.tiny_model(primitives=TINY_SHARP), space="sharp")
  batch = s.example_batch(2)
  params = jax.eval_shape(s.init, jax.random.PRNGKey(0), batch)
  paths = ["/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  # choke: c_mid fixed at 32 whatever C is (C=4 here)
  mids = [p for p in paths if "SharpSepConv" in p and p.endswith("Conv_0/kernel")]
  assert mids, paths[:10]
  leaves = dict(zip(paths, jax.tree_util.tree_leaves(params)))
  assert all(leaves[p].shape[-1] == 32 for p in mids)


@pytest.mark.parametrize("method", [
    "first_order",
    # Second-order compilation takes minutes on 2 CPU cores; --runslow.
    pytest.param("exact_hvp", marks=pytest.mark.slow)])
def test_tiny_sharp_search_end_to_end(tmp_path, method):
  """A 2-step search of a 1-node 'sharp' supernet through the CLI, both gradient orders."""
  config = helpers.write_tiny_config(
      tmp_path, 'c.space = "sharp"', f"c.model.primitives = {TINY_SHARP!r}",
      f'c.arch.method = "{method}"', 'c.optim.schedule = "cosine_power_by_epoch"',
      "c.max_steps = 2", "c.checkpoint.enabled = False")
  rc = cli.main(["search", f"--config={config}", f"--workdir={tmp_path / 'run'}"])
  assert rc == 0
  import json
  g = json.loads((tmp_path / "run" / "genotype.json").read_text())
  assert {op for op, _ in g["normal"] + g["reduce"]} <= set(TINY_SHARP)
  alphas = json.loads((tmp_path / "run" / "alphas.json").read_text())
  assert np.asarray(alphas["normal"]).shape == (2, 4)


def test_train_a_sharp_genotype_file(tmp_path, capsys):
  """`jdarts train` with model.name=sharp_cifar on a genotype.json naming sharp ops."""
  from jdarts import genotypes
  g = genotypes.Genotype(normal=[("flood_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[2],
                         reduce=[("max_pool_3x3", 0), ("dil_choke_conv_3x3", 1)],
                         reduce_concat=[2])
  search_dir = tmp_path / "search"
  search_dir.mkdir()
  genotypes.save_genotype(g, str(search_dir))
  common = ["--config=configs/train_cifar10_sharp.py", "--config.data.name=synthetic",
            "--config.model.init_channels=4", "--config.model.layers=1",
            "--config.model.auxiliary=False", "--config.batch_size=8",
            "--config.eval_batch_size=128", "--config.max_steps=2", "--config.progress=False",
            "--config.data.autoaugment=False", "--config.compilation_cache_dir=",
            "--config.parallel.num_devices=1", f"--config.genotype={search_dir}"]
  # the DARTS network does not know the sharp operations: one line naming the key
  rc = cli.main(["train", f"--workdir={tmp_path / 'bad'}"] + common + ["--config.model.name=cifar"])
  assert rc != 0 and "flood_conv_3x3" in capsys.readouterr().err
  rc = cli.main(["train", f"--workdir={tmp_path / 'run'}"] + common)
  assert rc == 0, capsys.readouterr().err
  import json
  s = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert s["steps"] == 2 and np.isfinite(s["test_loss"])
