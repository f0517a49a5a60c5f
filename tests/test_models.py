"""Evaluation networks: exact reference parameter counts, shapes, drop-path, BN, loss.

Reference numbers. They were obtained independently of jdarts with PyTorch
2.13 (CPU): a small re-creation of quark0/darts `cnn/model.py` and
`cnn/operations.py` (NetworkCIFAR, NetworkImageNet, Cell, the auxiliary
heads, every operation incl. sep_conv_7x7 and conv_7x1_1x7), written from
reading the reference, with the genotypes transcribed from the reference's
`cnn/genotypes.py`. Parameters are counted as the reference's
`count_parameters_in_MB`: the sum of `numel` over `named_parameters()` whose
name does not contain 'auxiliary' (`params`), and over all of them
(`params_total`). Multiply-adds are forward hooks on every Conv2d
(output elements x in_channels / groups x kernel area) and Linear
(in x out) for one image at inference (auxiliary head not counted).
Cross-checks against published numbers: the reference's DARTS_V2 CIFAR log
says "param size = 3.349342MB" (= 3,349,342 here) and the paper's Table 3
gives 4.7M for DARTS_V2 on ImageNet (4,718,752). The paper's 574M
multiply-adds is not what conv + linear layers give (529,911,552, matching
quark0/darts issue #46 where users measure 523-545M); see jdarts/summary.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdarts import genotypes, models, optim, schedules, train
from jdarts.spaces.darts_cnn import cells

# (params without auxiliary head, params with it); CIFAR: C=36, 20 cells,
# 10 classes; ImageNet: C=48, 14 cells, 1000 classes.
REFERENCE_PARAMS = {
    ("cifar", "DARTS_V1"): (3169414, 3645840),
    ("cifar", "DARTS_V2"): (3349342, 3825768),
    ("cifar", "NASNet"): (3830950, 4288944),
    ("cifar", "AmoebaNet"): (3145078, 3603072),
    ("imagenet", "DARTS_V1"): (4510432, 5771208),
    ("imagenet", "DARTS_V2"): (4718752, 5979528),
    ("imagenet", "NASNet"): (5564320, 6800520),
    ("imagenet", "AmoebaNet"): (4627360, 5863560),
}
PAPER_SETTINGS = {"cifar": (36, 20, 10, (32, 32, 3)), "imagenet": (48, 14, 1000, (224, 224, 3))}

# One normal node and one reduction node: compiles in a fraction of the time.
TINY = genotypes.Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[2],
    reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1)], reduce_concat=[2])


@pytest.mark.parametrize("kind,name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_equal_the_reference(kind, name):
  C, layers, classes, shape = PAPER_SETTINGS[kind]
  net = models.build_model(dict(name=kind, init_channels=C, layers=layers), classes,
                           genotype=genotypes.GENOTYPES[name])
  counts = models.count_params(models.abstract_variables(net, shape)["params"])
  assert (counts["params"], counts["params_total"]) == REFERENCE_PARAMS[(kind, name)]


def _compiled(fn, *args):
  """jit(fn) compiled for `args`; without LLVM optimisation (tiny programs, fast compile)."""
  return jax.jit(fn).lower(*args).compile(models.INIT_COMPILER_OPTIONS)


def _tiny_cifar(**kw):
  cfg = dict(name="cifar", init_channels=4, layers=3, auxiliary=True)
  cfg.update(kw)
  return models.build_model(cfg, 10, genotype=TINY)


@pytest.fixture(scope="module")
def tiny():
  """A 3-cell CIFAR network (cells: normal, reduce, reduce), its variables, 2 images."""
  net = _tiny_cifar()
  variables = models.init_variables(net, jax.random.PRNGKey(0), (32, 32, 3))
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)
  return net, variables, x


def test_cifar_shapes_aux_only_in_training(tiny):
  net, variables, x = tiny
  assert "auxiliary_head" in variables["params"]
  (logits, aux), updates = jax.eval_shape(
      lambda v, x: net.apply(v, x, train=True, drop_path_prob=0.2,
                             rngs={"dropout": jax.random.PRNGKey(1)},
                             mutable=["batch_stats"]), variables, x)
  assert logits.shape == (2, 10) and aux.shape == (2, 10)
  assert set(updates) == {"batch_stats"}
  logits, aux = jax.eval_shape(lambda v, x: net.apply(v, x, train=False), variables, x)
  assert logits.shape == (2, 10) and aux is None


def test_imagenet_shapes():
  net = models.build_model(dict(name="imagenet", init_channels=8, layers=3), 7,
                           genotype=TINY)
  variables = models.abstract_variables(net, (224, 224, 3))
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  (logits, aux), _ = jax.eval_shape(
      lambda v, x: net.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)},
                             mutable=["batch_stats"]), variables, x)
  assert logits.shape == (1, 7) and aux.shape == (1, 7)
  # Cell 0 reduces the stem's 56x56 output to meet stem1's 28x28.
  pre0 = variables["params"]["cell_0"]["preprocess0"]  # FactorizedReduce: two C/2 convs
  assert pre0["Conv_0"]["kernel"].shape[-1] == pre0["Conv_1"]["kernel"].shape[-1] == 4
  logits, aux = jax.eval_shape(lambda v, x: net.apply(v, x, train=False), variables, x)
  assert logits.shape == (1, 7) and aux is None


def test_aux_head_rejects_other_resolutions():
  net = _tiny_cifar()
  with pytest.raises(ValueError, match="auxiliary head expects"):
    models.abstract_variables(net, (16, 16, 3))


def test_drop_path_statistics():
  p, n = 0.3, 20000
  x = jnp.ones((n, 2, 2, 1))
  y = np.asarray(jax.jit(cells.drop_path)(x, p, jax.random.PRNGKey(0)))
  per_example = y.reshape(n, -1)
  # Whole examples are kept or dropped, kept ones scaled by 1 / keep.
  assert np.all(per_example == per_example[:, :1])
  values = np.unique(per_example)
  np.testing.assert_allclose(values, [0.0, 1 / (1 - p)], rtol=1e-6)
  kept = np.mean(per_example[:, 0] > 0)
  sigma = np.sqrt(p * (1 - p) / n)
  assert abs(kept - (1 - p)) < 4 * sigma
  # The mean is preserved in expectation.
  assert abs(y.mean() - 1.0) < 4 * sigma / (1 - p)


def _cell_outputs(entries, drop_prob, train, n=512):
  cell = cells.Cell(tuple(entries), (2,), 3, False, False, models.op_options({}))
  s = jnp.asarray(np.random.RandomState(1).rand(n, 4, 4, 3) + 0.5, jnp.float32)
  key = jax.random.PRNGKey(0)
  variables = _compiled(lambda k: cell.init({"params": k, "dropout": k}, s, s, 0.0, False),
                        key)(key)
  apply = _compiled(lambda v, p, k: cell.apply(v, s, s, p, train, rngs={"dropout": k},
                                               mutable=["batch_stats"])[0],
                    variables, 0.5, key)
  out = apply(variables, drop_prob, jax.random.PRNGKey(2))
  ref = apply(variables, 0.0, jax.random.PRNGKey(2))
  return np.asarray(out), np.asarray(ref)


def test_drop_path_in_cells():
  p = 0.4
  keep = 1 - p
  # Two identical non-identity paths: each example sums 0, 1 or 2 kept copies.
  out, ref = _cell_outputs([("max_pool_3x3", 1), ("max_pool_3x3", 1)], p, True)
  ratio = (out / ref).reshape(len(out), -1)
  np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-5)
  kept = 2 * keep * ratio[:, 0]  # kept paths (0, 1 or 2); `ref` sums both, unscaled
  np.testing.assert_allclose(kept, np.round(kept), atol=1e-5)
  assert set(np.round(kept).astype(int)) <= {0, 1, 2}
  assert abs(np.mean(kept) / 2 - keep) < 4 * np.sqrt(p * keep / (2 * len(kept)))
  # Identity operations are never dropped (reference: `not isinstance(op, Identity)`).
  out, ref = _cell_outputs([("skip_connect", 0), ("skip_connect", 1)], 0.9, True)
  np.testing.assert_array_equal(out, ref)
  # Inference: no drop-path whatever the probability.
  out, ref = _cell_outputs([("max_pool_3x3", 0), ("avg_pool_3x3", 1)], 0.9, False)
  np.testing.assert_array_equal(out, ref)


def test_batchnorm_running_averages_as_pytorch(tiny):
  net, variables, x = tiny
  _, updates = _compiled(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]),
                         variables, x)(variables, x)
  # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch mean.
  conv_out = jax.lax.conv_general_dilated(
      x, variables["params"]["stem_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  batch_mean = np.asarray(conv_out).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["stem_bn"]["bn"]["mean"],
                             0.1 * batch_mean, rtol=1e-4, atol=1e-6)
  # Inference uses the running averages: new statistics change the logits.
  infer = _compiled(lambda v, x: net.apply(v, x, train=False)[0], variables, x)
  before = infer(variables, x)
  after = infer({"params": variables["params"], **updates}, x)
  assert not np.allclose(before, after)


def test_loss_adds_weighted_auxiliary_term():
  rng = np.random.RandomState(0)
  logits, aux = (jnp.asarray(rng.randn(6, 5), jnp.float32) for _ in range(2))
  labels = jnp.asarray(rng.randint(0, 5, 6))
  for smoothing in (0.0, 0.1):
    loss, m = train.classification_loss(logits, aux, labels, auxiliary_weight=0.4,
                                        label_smoothing=smoothing)

    def ce(z):  # written out: -sum(target * log_softmax), targets smoothed
      t = (1 - smoothing) * np.eye(5)[np.asarray(labels)] + smoothing / 5
      return float(np.mean(-np.sum(t * np.asarray(jax.nn.log_softmax(z)), -1)))
    np.testing.assert_allclose(m["main_loss"], ce(logits), rtol=1e-5)
    np.testing.assert_allclose(m["aux_loss"], ce(aux), rtol=1e-5)
    np.testing.assert_allclose(loss, ce(logits) + 0.4 * ce(aux), rtol=1e-5)
  loss, m = train.classification_loss(logits, None, labels)
  np.testing.assert_allclose(loss, m["main_loss"])


def test_a_few_training_steps_reduce_the_loss(tiny):
  import ml_collections
  net, variables, _ = tiny
  optim_cfg = ml_collections.ConfigDict(dict(learning_rate=0.05, learning_rate_min=0.0,
                                         schedule="constant", momentum=0.9,
                                         weight_decay=3e-4, grad_clip=5.0))
  lr = schedules.make_schedule(optim_cfg, 1, 10)
  tx = optim.weight_optimizer(optim_cfg, lr)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(3))
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(4, 32, 32, 3), jnp.float32),
           "label": jnp.asarray([0, 1, 2, 3], jnp.int32)}
  step = _compiled(train.make_train_step(net, tx, lr, lambda s: 0.1, auxiliary_weight=0.4),
                   state, batch)
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 6
  np.testing.assert_allclose(metrics["loss"], metrics["main_loss"] + 0.4 * metrics["aux_loss"],
                             rtol=1e-5)


def test_train_configs_load_and_validate():
  """configs/train_*.py (skipped by test_cli's search-config check) hold the paper values."""
  import importlib.util
  import os
  from jdarts import train_config
  root = os.path.join(os.path.dirname(__file__), os.pardir, "configs")

  def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config() if arg is None else mod.get_config(arg)

  c10, inet, debug = load("train_cifar10"), load("train_imagenet"), load("train_cifar10", "debug")
  for c in (c10, inet, debug):
    train_config.validate(c)
  # Paper A.2.1 / A.2.3 (and the reference scripts where the paper defers to them).
  assert (c10.epochs, c10.batch_size, c10.model.init_channels, c10.model.layers) == (600, 96, 36, 20)
  assert (c10.optim.learning_rate, c10.optim.weight_decay, c10.data.cutout) == (0.025, 3e-4, 16)
  assert (c10.model.drop_path_prob, c10.loss.auxiliary_weight, c10.optim.grad_clip) == (0.2, 0.4, 5.0)
  assert (inet.epochs, inet.batch_size, inet.model.init_channels, inet.model.layers) == (250, 128, 48, 14)
  assert (inet.optim.learning_rate, inet.optim.lr_decay, inet.optim.weight_decay) == (0.1, 0.97, 3e-5)
  assert (inet.loss.label_smoothing, inet.loss.auxiliary_weight, inet.optim.grad_clip) == (0.1, 0.4, 5.0)
  assert inet.optim.schedule == "exponential_by_epoch" and c10.optim.schedule == "cosine_by_epoch"
