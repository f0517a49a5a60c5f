"""The NAS-Bench-201 space (issue 14): strings, derivation, mixtures, sizes, steps, estimators.

References are independent of the code under test: hand-written strings,
numpy mixtures and pooling, parameter counts re-derived by formula from the
reference network (AutoDL-Projects `tiny_network.py`, `cell_operations.py`),
the exact second-order hypergradient against autodiff through the step.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from jdarts import models, optim, schedules, search
from jdarts.config_lib import ConfigError
from jdarts.spaces.nb201 import genotype as g
from jdarts.spaces.nb201.network import SearchCell

# Parameter-light candidates (no 3x3 conv): the step graphs compile faster.
LIGHT = ("none", "skip_connect", "nor_conv_1x1", "avg_pool_3x3")
BEST = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
        "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")


def test_string_round_trip_and_errors():
  for s in (BEST, "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
            "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|"):
    arch = g.parse_arch(s)
    assert g.arch_to_str(arch) == s
    assert [len(n) for n in arch] == [1, 2, 3]
  assert g.parse_arch(BEST)[2] == (("skip_connect", 0), ("nor_conv_3x3", 1), ("nor_conv_3x3", 2))
  for bad, why in (("|nor_conv_3x3~0|", "nodes"), ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                   "unknown operation 'conv'"),
                   ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "inputs in order")):
    with pytest.raises(ValueError, match=why):
      g.parse_arch(bad)


def test_derive_from_hand_made_alphas_softmax_and_sigmoid():
  # Rows in EDGES order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2; columns PRIMITIVES.
  a = np.full((6, 5), -1.0)
  for e, k in enumerate((3, 0, 2, 1, 4, 3)):  # none wins edge 2<-0
    a[e, k] = 2.0
  want = "|nor_conv_3x3~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"
  for mixing in ("softmax", "sigmoid"):
    assert g.arch_to_str(g.derive(a, mixing=mixing)) == want
  # Through the space, from sigmoid-initialised alphas moved by hand.
  space = helpers.make_space(dict(init_channels=4, cells_per_stage=1, mixing="sigmoid",
                                  alpha_init="uniform_weights"), space="nb201")
  alphas = space.init_alphas(jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(alphas["cell"]), -math.log(4), rtol=1e-6)
  np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(alphas["cell"]))), 0.2, rtol=1e-6)
  moved = {"cell": alphas["cell"].at[:, 1].add(0.1)}
  assert space.genotype_json(space.derive(moved)) == {
      "arch": "|skip_connect~0|+|skip_connect~0|skip_connect~1|+"
              "|skip_connect~0|skip_connect~1|skip_connect~2|",
      "none": 0, "skip_connect": 6, "nor_conv_1x1": 0, "nor_conv_3x3": 0,
      "avg_pool_3x3": 0, "parameter_free": 6}


def _np_avg_pool3(x):
  """3x3 average pool, stride 1, padding 1 not counted: (N, H, W, C) numpy."""
  n, h, w, c = x.shape
  out = np.zeros_like(x)
  for i in range(h):
    for j in range(w):
      win = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :]
      out[:, i, j, :] = win.mean(axis=(1, 2))
  return out


@pytest.mark.parametrize("mixing", ["softmax", "sigmoid"])
def test_cell_mixture_against_hand_computation(mixing):
  prims = ("none", "skip_connect", "avg_pool_3x3")  # parameter-free: numpy can do it all
  rng = np.random.RandomState(0)
  x = rng.randn(2, 5, 5, 3).astype(np.float32)
  a = rng.randn(6, 3).astype(np.float32)
  cell = SearchCell(3, prims)
  from jdarts import mixing as mixing_lib
  w = np.asarray(mixing_lib.mix(mixing, jnp.asarray(a)), np.float64)
  hand = np.exp(a) / np.exp(a).sum(-1, keepdims=True) if mixing == "softmax" else (
      1 / (1 + np.exp(-a.astype(np.float64))))
  np.testing.assert_allclose(w, hand, rtol=1e-6)
  # The supernet mixes the alphas once and hands every cell the weights.
  got = np.asarray(cell.apply({}, jnp.asarray(x), mixing_lib.mix(mixing, jnp.asarray(a))))
  nodes = [x.astype(np.float64)]
  for i in range(1, 4):
    total = 0.0
    for e, (t, j) in enumerate(g.EDGES):
      if t == i:
        total = total + hand[e, 1] * nodes[j] + hand[e, 2] * _np_avg_pool3(nodes[j])
    nodes.append(total)
  np.testing.assert_allclose(got, nodes[-1], rtol=1e-5, atol=1e-5)


def _reference_params(arch, C=16, N=5, num_classes=10, in_ch=3):
  """The reference TinyNetwork's parameter count, by formula (AutoDL-Projects cell_operations)."""
  relu_conv_bn = lambda cin, cout, k: k * k * cin * cout + 2 * cout  # no conv bias, affine BN
  total = 9 * in_ch * C + 2 * C                                       # stem conv + BN
  for mult in (1, 2, 4):
    Cs = C * mult
    per_cell = sum(relu_conv_bn(Cs, Cs, 3 if op == "nor_conv_3x3" else 1)
                   for node in arch for op, _ in node if op.startswith("nor_conv"))
    total += N * per_cell
    if mult > 1:                                                      # ResNetBasicblock
      cin = Cs // 2
      total += relu_conv_bn(cin, Cs, 3) + relu_conv_bn(Cs, Cs, 3) + cin * Cs
  return total + 2 * 4 * C + 4 * C * num_classes + num_classes       # lastact BN, classifier


@pytest.mark.parametrize("arch_str,classes,published", [
    (BEST, 10, 1288506),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
     "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 10, 1531546),  # NB201's largest, 1.53M
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", 10, 73306),  # NB201's smallest
    ("|nor_conv_1x1~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|",
     100, None),
    (BEST, 100, 1294356),
    (BEST, 120, None),
])
def test_parameter_counts_equal_the_reference(arch_str, classes, published):
  arch = g.parse_arch(arch_str)
  net = models.build_model(dict(name="nb201", genotype=arch_str), classes)
  counted = models.count_params(models.abstract_variables(net, (32, 32, 3))["params"])
  assert counted["params"] == _reference_params(arch, num_classes=classes)
  if published is not None:
    assert counted["params"] == published


def _tiny(method="first_order", prims=g.PRIMITIVES, mixing="softmax"):
  space = helpers.make_space(dict(init_channels=4, cells_per_stage=1, primitives=prims,
                                  mixing=mixing), image_shape=(8, 8, 3), space="nb201")
  cfg = helpers.tiny_search_config()
  cfg.arch.method = method
  sched = schedules.make_schedule(cfg.optim, 1, 10)
  w_opt, a_opt = optim.weight_optimizer(cfg.optim, sched), optim.arch_optimizer(cfg.arch)
  rng = np.random.RandomState(0)
  batches = [{"image": rng.randn(4, 8, 8, 3).astype(np.float32),
              "label": rng.randint(0, 10, 4).astype(np.int32)} for _ in range(3)]
  state = search.init_state(space, jax.random.PRNGKey(0), batches[0], w_opt, a_opt)
  return space, cfg, w_opt, a_opt, sched, batches, state


def test_single_level_step_uses_one_batch_and_logs_grad_correlation():
  space, cfg, w_opt, a_opt, sched, b, state = _tiny("single_level", mixing="sigmoid",
                                                    prims=LIGHT)
  step = jax.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched,
                                         log_grad_correlation=True))
  s1, m1 = step(state, b[0], b[1])
  s2, m2 = step(state, b[0], b[2])
  for x, y in zip(jax.tree_util.tree_leaves((s1.params, s1.alphas, s1.a_opt_state)),
                  jax.tree_util.tree_leaves((s2.params, s2.alphas, s2.a_opt_state))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert np.abs(np.asarray(s1.alphas["cell"] - state.alphas["cell"])).max() > 0
  assert float(m1["val_loss"]) != float(m2["val_loss"])
  # The logged correlation is the cosine of the two alpha gradients.
  # Jitted: eagerly, every op of the network dispatches (and compiles) alone.
  grad_fn = jax.jit(jax.grad(lambda a, batch: space.loss(state.params, a, batch, None, None)[0]))
  grad = lambda batch: np.asarray(grad_fn(state.alphas, batch)["cell"])
  gt, gv = grad(b[0]).ravel(), grad(b[1]).ravel()
  cos = gt @ gv / np.linalg.norm(gt) / np.linalg.norm(gv)
  np.testing.assert_allclose(float(m1["grad_correlation"]), cos, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the control of the test above; one more step compile (~8 s)
def test_bilevel_step_reads_the_val_batch():
  """Control: with the same data as above, a bilevel step's alphas follow the val batch."""
  space, cfg, w_opt, a_opt, sched, b, state = _tiny("single_level", mixing="sigmoid",
                                                    prims=LIGHT)
  bi = jax.jit(search.make_search_step(space, _arch(cfg, "first_order"), w_opt, a_opt,
                                       sched))
  s3, _ = bi(state, b[0], b[1])
  s4, _ = bi(state, b[0], b[2])
  assert np.abs(np.asarray(s3.alphas["cell"] - s4.alphas["cell"])).max() > 0


def _arch(cfg, method):
  a = cfg.arch.copy_and_resolve_references()
  a.method = method
  return a


@pytest.mark.slow  # minutes of second-order compilation on 2 CPU cores; --runslow
def test_every_estimator_runs_on_a_tiny_nb201_space():
  """first_order, exact_hvp, unrolled, finite_difference; exact_hvp equals unrolled."""
  from jdarts import hypergrad
  space, cfg, w_opt, a_opt, sched, b, state = _tiny(prims=LIGHT)
  loss = lambda p, a, batch: space.loss(p, a, batch, None, None)[0]
  grads = {}
  for method in ("first_order", "exact_hvp", "unrolled", "finite_difference"):
    fn = jax.jit(lambda p, a, m=method: hypergrad.arch_grad(
        m, loss, loss, p, a, b[0], b[1], xi=0.01, fd_eps=0.01))
    grads[method] = np.asarray(fn(state.params, state.alphas)["cell"])
    assert grads[method].shape == (6, 4) and np.all(np.isfinite(grads[method]))
  rel = lambda x, y: np.linalg.norm(x - y) / np.linalg.norm(y)
  assert rel(grads["exact_hvp"], grads["unrolled"]) < 1e-3
  # Eq. 8 in float32 with eps = 0.01 / ||v|| through ReLU and batch-statistics
  # BN: same direction, tens of percent off (measured 41% at this size); only
  # the direction is a fair check here (the eps sweep of `jdarts hypergrad`
  # measures its fidelity properly).
  cos = lambda x, y: float((x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y))
  assert cos(grads["finite_difference"], grads["exact_hvp"]) > 0.9
  assert rel(grads["first_order"], grads["exact_hvp"]) > 1e-3


def test_alpha_init_tied_to_the_mixing_in_both_spaces():
  space = helpers.make_space(helpers.tiny_model(mixing="sigmoid", alpha_init="uniform_weights"))
  a = space.init_alphas(jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(a["normal"]), -math.log(len(helpers.TINY_PRIMITIVES) - 1),
                             rtol=1e-6)
  soft = helpers.make_space(helpers.tiny_model(alpha_init="uniform_weights"))
  assert float(np.abs(np.asarray(soft.init_alphas(jax.random.PRNGKey(0))["reduce"])).max()) == 0
  for sp in ("darts_cnn", "nb201"):
    model = helpers.tiny_model(mixing="max_w", alpha_init="uniform_weights") if sp == "darts_cnn" \
        else dict(mixing="max_w", alpha_init="uniform_weights")
    with pytest.raises(ConfigError, match="model.alpha_init='uniform_weights': mixing 'max_w'"):
      helpers.make_space(model, space=sp)


@pytest.mark.parametrize("name,arg", [("quickstart_nb201", ""), ("quickstart_nb201", "single"),
                                      ("search_nb201_single", "cifar100"),
                                      ("search_nb201_darts", "second_order,imagenet16_120")])
def test_configs_validate(name, arg):
  import importlib.util
  import os
  from jdarts import experiment
  path = os.path.join(os.path.dirname(helpers.__file__), "..", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config(arg)
  experiment.validate(cfg)
  assert cfg.space == "nb201" and cfg.batch_size in (32, 64)
  if name == "search_nb201_single":
    assert (cfg.arch.method, cfg.model.mixing, cfg.optim.learning_rate, cfg.arch.weight_decay,
            cfg.data.name, cfg.epochs) == ("single_level", "sigmoid", 0.005, 0.0, "cifar100", 50)


def test_jdarts_summary_counts_an_nb201_string(capsys):
  """`jdarts summary --config=configs/train_nb201.py --config.genotype=... --json`."""
  import json
  import os
  from jdarts import cli
  config = os.path.join(os.path.dirname(helpers.__file__), "..", "configs", "train_nb201.py")
  for dataset, want in (("cifar10", 1288506), ("cifar100", 1294356)):
    assert cli.main(["summary", f"--config={config}", f"--config.genotype={BEST}",
                     f"--config.dataset={dataset}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["params"], out["num_classes"]) == (want, 10 if dataset == "cifar10" else 100)
  assert cli.main(["summary", f"--config={config}", "--config.genotype=|conv~0|", "--json"]) != 0
  assert "NAS-Bench-201 string" in capsys.readouterr().err
