"""`jdarts summary`: multiply-adds counted on the jaxpr, reference sizes, CLI output.

Reference multiply-adds were measured with forward hooks on every Conv2d and
Linear of a PyTorch re-creation of quark0/darts `cnn/model.py` (how it was
built: tests/test_models.py's docstring), one image, inference, auxiliary head
excluded. The reference supernet (`cnn/model_search.py` re-created the same
way: C=16, 8 cells, 10 classes) has 1,930,618 weights and, with the same
hooks, 300,255,744 multiply-adds per image, which `jdarts summary
--config=configs/search_cifar10_darts.py` also reports (not run here: it
traces the whole supernet twice).
"""
import json
import os

import jax
import jax.numpy as jnp

from jdarts import cli, genotypes, models, summary
import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Conv2d + Linear multiply-adds of the reference networks for one image.
REFERENCE_MULT_ADDS = {
    ("cifar", "DARTS_V1"): 500987520,
    ("cifar", "DARTS_V2"): 528359040,
    ("cifar", "NASNet"): 603452448,
    ("cifar", "AmoebaNet"): 488931552,
    ("imagenet", "DARTS_V1"): 505864704,
    ("imagenet", "DARTS_V2"): 529911552,  # the paper says 574M (see jdarts/summary.py)
    ("imagenet", "NASNet"): 604031616,
    ("imagenet", "AmoebaNet"): 526746624,
}
REFERENCE_SUPERNET_PARAMS = 1930618


def test_jaxpr_macs_closed_forms():
  x = jnp.zeros((2, 9, 9, 6))
  k_grouped = jnp.zeros((3, 3, 2, 12))  # 3 groups of 2 input channels
  w = jnp.zeros((12, 5))

  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=3)  # -> (2, 5, 5, 12)
    z = jnp.mean(y, axis=(1, 2)) @ w                       # (2, 12) x (12, 5)
    z = jax.lax.cond(z.sum() > 0, lambda a: a @ jnp.eye(5), lambda a: a, z)
    z, _ = jax.lax.scan(lambda c, _: (c @ jnp.eye(5), None), z, None, length=4)
    return jax.jit(lambda q: q * 2)(z)

  conv = 2 * 5 * 5 * 12 * (2 * 3 * 3)
  dense = 2 * 12 * 5
  assert summary.count_macs(f, x, k_grouped, w) == conv + dense + 2 * 5 * 5 + 4 * 2 * 5 * 5


def _run(args, capsys):
  rc = cli.main(args)
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  return captured.out


def test_cli_json_imagenet_darts_v2(capsys):
  out = _run(["summary", f"--config={REPO}/configs/train_imagenet.py", "--json"], capsys)
  s = json.loads(out)
  assert s["params"] == 4718752          # paper Table 3: 4.7M
  assert s["params_total"] == 5979528
  assert s["mult_adds"] == REFERENCE_MULT_ADDS[("imagenet", "DARTS_V2")]


def test_cli_text_cifar_darts_v2(capsys):
  out = _run(["summary", f"--config={REPO}/configs/train_cifar10.py"], capsys)
  assert "3,349,342" in out and "3.349342M" in out   # reference log: 3.349342MB
  assert f"{REFERENCE_MULT_ADDS[('cifar', 'DARTS_V2')]:,}" in out


def test_cli_genotype_file_override(tmp_path, capsys):
  g = genotypes.Genotype(normal=[("sep_conv_5x5", 0), ("skip_connect", 1)], normal_concat=[2],
                         reduce=[("max_pool_3x3", 0), ("conv_7x1_1x7", 1)], reduce_concat=[2])
  path = genotypes.save_genotype(g, str(tmp_path / "g.json"))
  out = _run(["summary", f"--config={REPO}/configs/train_cifar10.py", f"--config.genotype={path}",
              "--config.model.init_channels=4", "--config.model.layers=3", "--json"], capsys)
  s = json.loads(out)
  net = models.build_model(dict(name="cifar", init_channels=4, layers=3), 10, genotype=g)
  counts = models.count_params(models.abstract_variables(net, (32, 32, 3))["params"])
  assert (s["params"], s["params_total"]) == (counts["params"], counts["params_total"])
  assert s["params"] < s["params_total"]
  assert s["mult_adds"] > 0


def test_search_config_counts_weights_not_alphas():
  cfg = helpers.tiny_search_config()
  s = summary.summarize(cfg)
  from jdarts import spaces, ops
  space = spaces.get_space("darts_cnn", cfg.model.to_dict(), helpers.image_info((8, 8, 1), 10))
  params = jax.eval_shape(space.init, jax.random.PRNGKey(0),
                          {"image": jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)})
  assert s["params"] == s["params_total"] == ops.count_params(params)
  assert s["alphas"] == 2 * 2 * 4 and s["mult_adds"] > 0


def test_paper_supernet_weights():
  from jdarts import config_lib, spaces, ops
  cfg = config_lib.search_defaults()
  space = spaces.get_space("darts_cnn", cfg.model.to_dict(), helpers.image_info((32, 32, 3), 10))
  params = jax.eval_shape(space.init, jax.random.PRNGKey(0),
                          {"image": jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)})
  assert ops.count_params(params) == REFERENCE_SUPERNET_PARAMS


def test_unknown_genotype_is_one_line(capsys):
  rc = cli.main(["summary", f"--config={REPO}/configs/train_cifar10.py",
                 "--config.genotype=DARTS_V3"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and "DARTS_V3" in err
