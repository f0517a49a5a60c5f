"""The DARTS CNN search space (jdarts.spaces.darts_cnn) against independent references.

References: the published size of the paper's supernet (quark0/darts prints
"param size = 1.930618MB"), closed-form mixing weights and cell shapes, each
candidate operation applied on its own and summed by hand, a published
genotype (DARTS_V2) recovered from alphas built to select it, the reference's
operation metadata (which ops have weights, which get a search BatchNorm)
written out by hand, and the config checks' one-line messages.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdarts import config_lib, genotypes, mixing, ops, parallel, spaces
from jdarts.spaces import darts_cnn
from jdarts.spaces.darts_cnn import primitives
import helpers

PRIMITIVES = genotypes.PRIMITIVES
# quark0/darts cnn/model_search.py MixedOp: `if 'pool' in primitive: op =
# nn.Sequential(op, nn.BatchNorm2d(C, affine=False))`; the weight-free ops are
# those of cnn/operations.py without a conv (skip_connect counted as in the
# collapse literature, though its stride-2 form has weights).
SEARCH_BN = {"max_pool_3x3", "avg_pool_3x3"}
PARAMETER_FREE = {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}


def np_softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def np_batchnorm(x, eps=1e-5):
  mean = x.mean(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=(0, 1, 2)) + eps)


# ---------------------------------------------------------------------------
# Mixings and the mixed operation
# ---------------------------------------------------------------------------

def test_mixings_closed_forms():
  """softmax (DARTS eq. 2), sigmoid (Single-DARTS), 1 - max(w) + w (sharpDARTS eq. 3)."""
  a = np.random.RandomState(0).randn(3, 8)
  sm = np_softmax(a)
  np.testing.assert_allclose(mixing.mix("softmax", jnp.asarray(a)), sm, rtol=1e-5)
  np.testing.assert_allclose(mixing.mix("sigmoid", jnp.asarray(a)), np_sigmoid(a), rtol=1e-5)
  np.testing.assert_allclose(mixing.mix("max_w", jnp.asarray(a)),
                             1.0 - sm.max(-1, keepdims=True) + sm, rtol=1e-5)
  with pytest.raises(KeyError, match="softmax"):
    mixing.mix("softmx", jnp.asarray(a))


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_is_weighted_sum_of_separate_ops(stride):
  """Each op applied alone with the mixed op's params, weighted by numpy softmax.

  Pooling is followed by a non-affine batch-statistics BN (reference
  MixedOp), here numpy's; 'none' contributes zero.
  """
  rng = np.random.RandomState(stride)
  C = 4
  x = jnp.asarray(rng.randn(2, 6, 6, C), jnp.float32)
  alphas = rng.randn(len(PRIMITIVES))
  w = np_softmax(alphas)
  opts = ops.OpOptions()
  mixed = darts_cnn.MixedOp(C, stride, PRIMITIVES, opts)
  params = mixed.init(jax.random.PRNGKey(0), x, jnp.asarray(w, jnp.float32))["params"]
  got = mixed.apply({"params": params}, x, jnp.asarray(w, jnp.float32))

  want = np.zeros((2, 6 // stride, 6 // stride, C))
  seen, used = {}, set()
  for k, name in enumerate(PRIMITIVES):
    if name == "none":
      continue
    op = primitives.make_op(name, C, stride, False, opts)
    # Flax names unnamed submodules <Class>_<n> in order of creation.
    cls = type(op).__name__
    sub = f"{cls}_{seen.get(cls, 0)}"
    seen[cls] = seen.get(cls, 0) + 1
    variables = {"params": params[sub]} if sub in params else {}
    used.add(sub)
    y = np.asarray(op.apply(variables, x), np.float64)
    if name in SEARCH_BN:
      y = np_batchnorm(y)
    want += w[k] * y
  assert set(params) <= used  # no parameters of the mixed op were left out
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_mixed_op_none_is_exact_zero():
  """Closed forms: only 'none' gives zeros at the output size; with skip it is w_skip * x."""
  x = jnp.asarray(np.random.RandomState(0).randn(2, 5, 5, 3), jnp.float32)
  opts = ops.OpOptions()
  y = darts_cnn.MixedOp(3, 2, ("none",), opts).apply({}, x, jnp.ones((1,)))
  np.testing.assert_array_equal(y, np.zeros((2, 3, 3, 3)))
  y = darts_cnn.MixedOp(3, 1, ("none", "skip_connect"), opts).apply(
      {}, x, jnp.asarray([0.7, 0.3]))
  np.testing.assert_allclose(y, 0.3 * np.asarray(x), rtol=1e-6)


# ---------------------------------------------------------------------------
# The paper's supernet
# ---------------------------------------------------------------------------

def _paper_space(**overrides):
  return spaces.get_space("darts_cnn", dict(init_channels=16, layers=8, **overrides),
                          helpers.image_info((32, 32, 3), 10))


def test_paper_supernet_parameter_count_and_alphas():
  """1,930,618 weights: quark0/darts's 'param size = 1.930618MB' (alphas excluded)."""
  space = _paper_space()
  batch = {"image": jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)}
  params = jax.eval_shape(lambda b: space.init(jax.random.PRNGKey(0), b), batch)
  assert ops.count_params(params) == 1_930_618
  assert sorted(k for k in params if k.startswith("cell_")) == [f"cell_{i}" for i in range(8)]

  alphas = space.init_alphas(jax.random.PRNGKey(0))
  assert set(alphas) == {"normal", "reduce"}
  for a in alphas.values():
    assert a.shape == (14, 8)  # 2 + 3 + 4 + 5 edges, 8 primitives
    np.testing.assert_array_equal(a, np.zeros((14, 8)))  # paper: zeros at init

  noisy = _paper_space(alpha_init_scale=1e-3).init_alphas(jax.random.PRNGKey(0))
  assert 0.5e-3 < float(jnp.std(noisy["normal"])) < 2e-3
  assert not np.allclose(noisy["normal"], noisy["reduce"])


def test_alpha_shape_errors_are_clear():
  """Wrong shapes and missing keys fail before any computation, naming the shapes."""
  space = _paper_space()
  good = space.init_alphas(jax.random.PRNGKey(0))
  space.check_alphas(good)
  bad = dict(good, reduce=jnp.zeros((14, 7)))
  with pytest.raises(ValueError, match=r"\(14, 7\).*\(14, 8\)"):
    space.check_alphas(bad)
  with pytest.raises(ValueError, match="'normal' and 'reduce'"):
    space.check_alphas({"normal": good["normal"]})
  with pytest.raises(ValueError, match=r"\(14, 7\)"):  # checked before params are touched
    space.apply(None, bad, {"image": jnp.zeros((1, 8, 8, 3))})


def test_unknown_primitive_names_close_match():
  """A misspelt primitive fails at construction and suggests the right name."""
  info = helpers.image_info()
  with pytest.raises(config_lib.ConfigError,
                     match=r"unknown operation 'sep_conv_3x4'.*'sep_conv_3x3'"):
    spaces.get_space("darts_cnn", dict(primitives=("none", "sep_conv_3x4")), info)
  with pytest.raises(config_lib.ConfigError, match="'sigmoid'"):
    spaces.get_space("darts_cnn", dict(mixing="sigmod"), info)


# ---------------------------------------------------------------------------
# A tiny supernet forward: logits, cell shapes, the weights every edge gets
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mix", ["softmax", "sigmoid"])
def test_tiny_supernet_cells_and_edge_weights(mix):
  """Closed-form cell shapes and strides; each edge gets mix(alpha row) of its cell type.

  5 cells (reductions at 5 // 3 = 1 and 2 * 5 // 3 = 3), C = 4, stem 3C,
  3 nodes (2 + 3 + 4 = 9 edges), output concat of the last 2 nodes, 8x8 inputs.
  """
  space = spaces.get_space("darts_cnn", dict(
      helpers.tiny_model(), layers=5, steps=3, multiplier=2, stem_multiplier=3,
      mixing=mix, primitives=("none", "avg_pool_3x3", "skip_connect")),
      helpers.image_info((8, 8, 1), 3))
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(2, 8, 8, 1), jnp.float32)}
  params = space.init(jax.random.PRNGKey(0), batch)
  alphas = {k: jnp.asarray(rng.randn(9, 3), jnp.float32) for k in ("normal", "reduce")}

  cells, edges = [], []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name == "__call__" and isinstance(m, darts_cnn.SearchCell):
      cells.append((m.name, m.reduction, args[0].shape, args[1].shape, out.shape))
    if context.method_name == "__call__" and isinstance(m, darts_cnn.MixedOp):
      edges.append((m.parent.reduction, m.stride, np.asarray(args[1])))
    return out

  # Eager on purpose: tiny ops compile once and are shared by both parametrisations.
  with nn.intercept_methods(record):
    logits = space.apply(params, alphas, batch)
  assert logits.shape == (2, 3)
  assert np.all(np.isfinite(np.asarray(logits)))
  assert cells == [
      # name, reduction, s0, s1, output: reduction cells halve H, W and double C.
      ("cell_0", False, (2, 8, 8, 12), (2, 8, 8, 12), (2, 8, 8, 8)),
      ("cell_1", True, (2, 8, 8, 12), (2, 8, 8, 8), (2, 4, 4, 16)),
      ("cell_2", False, (2, 8, 8, 8), (2, 4, 4, 16), (2, 4, 4, 16)),
      ("cell_3", True, (2, 4, 4, 16), (2, 4, 4, 16), (2, 2, 2, 32)),
      ("cell_4", False, (2, 4, 4, 16), (2, 2, 2, 32), (2, 2, 2, 32)),
  ]
  f = np_softmax if mix == "softmax" else np_sigmoid
  assert len(edges) == 5 * 9
  for n, (reduction, stride, w) in enumerate(edges):
    e = n % 9  # edges run node by node, each from node 0 upwards: alpha row e
    # Only the edges leaving the two cell inputs of a reduction cell have stride 2:
    # rows 0, 1 (node 2), 2, 3 (node 3) and 5, 6 (node 4).
    assert stride == (2 if reduction and e in (0, 1, 2, 3, 5, 6) else 1)
    a = np.asarray(alphas["reduce" if reduction else "normal"], np.float64)[e]
    np.testing.assert_allclose(w, f(a), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Derivation through the space
# ---------------------------------------------------------------------------

def _alphas_selecting(cell, steps=4, num_ops=len(PRIMITIVES), primitives=PRIMITIVES):
  """Alphas whose derivation is `cell`: 5 on each node's first entry, 4 on its second."""
  a = np.full((sum(2 + i for i in range(steps)), num_ops), -5.0)
  start = 0
  for i in range(steps):
    (op1, src1), (op2, src2) = cell[2 * i], cell[2 * i + 1]
    a[start + src1, primitives.index(op1)] = 5.0
    a[start + src2, primitives.index(op2)] = 4.0
    start += 2 + i
  return a


def test_derive_recovers_darts_v2_through_the_space():
  """Alphas built from the published DARTS_V2 cells derive back to DARTS_V2 exactly."""
  space = _paper_space()
  alphas = {"normal": jnp.asarray(_alphas_selecting(genotypes.DARTS_V2.normal)),
            "reduce": jnp.asarray(_alphas_selecting(genotypes.DARTS_V2.reduce))}
  got = space.derive(alphas)
  assert tuple(got.normal) == tuple(genotypes.DARTS_V2.normal)
  assert tuple(got.reduce) == tuple(genotypes.DARTS_V2.reduce)
  assert list(got.normal_concat) == [2, 3, 4, 5]
  assert list(got.reduce_concat) == [2, 3, 4, 5]

  # A space with its own primitives and cell size derives with those.
  prims = helpers.TINY_PRIMITIVES  # none, max_pool_3x3, skip_connect, sep_conv_3x3
  tiny = spaces.get_space("darts_cnn", helpers.tiny_model(), helpers.image_info())
  a = np.zeros((2, 4))
  a[1, prims.index("sep_conv_3x3")] = 3.0
  a[0, prims.index("max_pool_3x3")] = 1.0
  a[0, prims.index("none")] = 9.0  # 'none' is never chosen, whatever its weight
  got = tiny.derive({"normal": a, "reduce": a[::-1]})
  assert list(got.normal) == [("sep_conv_3x3", 1), ("max_pool_3x3", 0)]
  assert list(got.reduce) == [("sep_conv_3x3", 0), ("max_pool_3x3", 1)]
  assert list(got.normal_concat) == [2] and list(got.reduce_concat) == [2]


# ---------------------------------------------------------------------------
# The protocol: example batch, loss with rng and carry
# ---------------------------------------------------------------------------

def test_protocol_batch_loss_and_carry():
  """Cross-entropy and accuracy by numpy from the logits, over the unmasked rows.

  `rng` changes nothing (no dropout in the DARTS search) and the carry comes
  back as it went in.
  """
  space = spaces.get_space("darts_cnn", helpers.tiny_model(),
                           helpers.image_info((8, 8, 3), 5))
  assert isinstance(space, spaces.SearchSpace)
  assert space.name == "darts_cnn" and space.metric_names == ("accuracy",)
  assert space.init_carry(4) is None
  example = space.example_batch(4)
  assert example["image"].shape == (4, 8, 8, 3) and example["image"].dtype == jnp.float32
  assert example["label"].shape == (4,) and example["label"].dtype == jnp.int32
  assert not np.any(example["image"]) and not np.any(example["label"])

  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(4, 8, 8, 3), jnp.float32),
           "label": jnp.asarray([0, 1, 4, 2], jnp.int32),
           "mask": jnp.asarray([1.0, 1.0, 0.0, 1.0])}
  params = space.init(jax.random.PRNGKey(0), example)
  alphas = {k: jnp.asarray(rng.randn(*space.alpha_shape), jnp.float32)
            for k in ("normal", "reduce")}
  # One compiled function: op-by-op the supernet would compile every op apart.
  run = jax.jit(lambda rng, carry: (space.loss(params, alphas, batch, rng, carry),
                                    space.apply(params, alphas, batch)))
  carry = {"h": jnp.arange(3.0)}
  (loss, aux, carry_out), logits = run(jax.random.PRNGKey(1), carry)
  (loss2, _, _), _ = run(jax.random.PRNGKey(2), carry)
  np.testing.assert_array_equal(carry_out["h"], carry["h"])
  assert float(loss) == float(loss2)

  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(-1, keepdims=True)
  nll = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(4), [0, 1, 4, 2]]
  keep = np.array([0, 1, 3])
  correct = logits.argmax(-1) == np.array([0, 1, 4, 2])
  np.testing.assert_allclose(float(loss), nll[keep].mean(), rtol=1e-5)
  assert set(aux) == {"loss", "accuracy", "count"}
  np.testing.assert_allclose(float(aux["loss"]), nll[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["accuracy"]), correct[keep].mean(), rtol=1e-6)
  assert float(aux["count"]) == 3.0


# ---------------------------------------------------------------------------
# Config validation: one line naming the key, what it got, what works
# ---------------------------------------------------------------------------

BAD_MODEL_VALUES = [
    ("init_channels", 0, r"model\.init_channels=0; .*integer >= 1"),
    ("init_channels", 2.5, r"model\.init_channels=2\.5; .*integer >= 1"),
    ("init_channels", True, r"model\.init_channels=True; .*integer >= 1"),
    ("layers", 0, r"model\.layers=0; .*integer >= 1"),
    ("steps", 0, r"model\.steps=0; .*integer >= 1"),
    ("multiplier", 0, r"model\.multiplier=0; .*integer in 1\.\.steps=4"),
    ("multiplier", 5, r"model\.multiplier=5; .*integer in 1\.\.steps=4"),
    ("stem_multiplier", 0, r"model\.stem_multiplier=0; .*integer >= 1"),
    ("mixing", "softmx",
     r"model\.mixing='softmx' is unknown \(did you mean 'softmax'\?\); .*softmax, sigmoid, max_w"),
    ("dtype", "float16", r"model\.dtype='float16'; .*float32, bfloat16, float64"),
    ("depthwise", "fast", r"model\.depthwise='fast'; .*auto, xla, shift, dense, fused"),
    ("alpha_init_scale", -1e-3, r"model\.alpha_init_scale=-0\.001; .*finite number >= 0"),
    ("alpha_init_scale", float("nan"), r"model\.alpha_init_scale=nan; .*finite"),
    ("alpha_init_scale", float("inf"), r"model\.alpha_init_scale=inf; .*finite"),
    ("alpha_init_scale", "0.1", r"model\.alpha_init_scale='0\.1'; .*finite number"),
    ("primitives", (), r"model\.primitives=\(\); .*non-empty list"),
    ("primitives", "sep_conv_3x3", r"model\.primitives='sep_conv_3x3'; .*non-empty list"),
    ("primitives", ("none", "sep_conv_3x4"),
     r"model\.primitives has unknown operation 'sep_conv_3x4' \(did you mean "
     r"'sep_conv_3x3'\?\); known: .*dil_conv_3x3"),
    ("primitives", ("none", "skip_connect", "none"),
     r"model\.primitives=\('none', 'skip_connect', 'none'\) repeats none; .*once"),
    ("primitives", ("none",), r"model\.primitives=\('none',\) has no operation besides"),
]


@pytest.mark.parametrize("key,value,match", BAD_MODEL_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_MODEL_VALUES])
def test_validate_config_rejects_each_bad_value(key, value, match):
  model = dict(helpers.tiny_model(steps=4, multiplier=4), **{key: value})
  with pytest.raises(config_lib.ConfigError, match=match) as err:
    darts_cnn.DartsCNNSpace.validate_config(model)
  assert len(str(err.value).splitlines()) == 1
  # get_space runs the same checks before building anything.
  with pytest.raises(config_lib.ConfigError, match=match):
    spaces.get_space("darts_cnn", model, helpers.image_info())


def test_validate_config_accepts_the_shipped_settings():
  darts_cnn.DartsCNNSpace.validate_config({})  # every default
  darts_cnn.DartsCNNSpace.validate_config(config_lib.search_defaults().model.to_dict())
  darts_cnn.DartsCNNSpace.validate_config(
      helpers.tiny_model(dtype="bfloat16", mixing="max_w", alpha_init_scale=1e-3))


# ---------------------------------------------------------------------------
# Operation metadata and user-registered operations
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", primitives.PRIMITIVES + primitives.EXTRA_OPS)
def test_op_metadata_of_every_darts_operation(name):
  """The hand lists above; parameter_free also against the op's weights at stride 1."""
  info = primitives.op_info(name)
  assert info.parameter_free == (name in PARAMETER_FREE)
  assert info.search_bn == (name in SEARCH_BN)
  x = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
  op = primitives.make_op(name, 4, 1, False)
  n = ops.count_params(jax.eval_shape(op.init, jax.random.PRNGKey(0), x))
  assert (n == 0) == info.parameter_free


@pytest.fixture
def scratch_ops(monkeypatch):
  """Registrations made by a test stay in that test."""
  monkeypatch.setattr(primitives.OPS, "_entries", dict(primitives.OPS._entries))
  monkeypatch.setattr(primitives.OPS, "_info", dict(primitives.OPS._info))


def np_max_pool(x, window, stride):
  """Max pooling with -inf padding of window // 2, by loops."""
  N, H, W, C = x.shape
  p = window // 2
  Ho, Wo = (H + 2 * p - window) // stride + 1, (W + 2 * p - window) // stride + 1
  out = np.zeros((N, Ho, Wo, C))
  for i in range(Ho):
    for j in range(Wo):
      r = range(max(0, i * stride - p), min(H, i * stride - p + window))
      c = range(max(0, j * stride - p), min(W, j * stride - p + window))
      out[:, i, j] = x[:, list(r)][:, :, list(c)].max(axis=(1, 2))
  return out


@pytest.mark.parametrize("search_bn", [True, False])
def test_user_registered_op_metadata_used_by_mixed_op(scratch_ops, search_bn):
  """A user's 5x5 max pool, registered with the decorator: MixedOp adds the
  search BN exactly when the op was registered with search_bn=True."""
  @primitives.OPS.register("max_pool_5x5", parameter_free=True, search_bn=search_bn)
  def _max_pool_5x5(C, stride, affine, opts):
    return ops.Pool("max", stride, window=5)

  assert primitives.op_info("max_pool_5x5") == primitives.OpInfo(True, search_bn)
  rng = np.random.RandomState(3)
  x = rng.randn(2, 6, 6, 3) * 2.0 + 1.0
  w = np.array([0.2, 0.5, 0.3])
  mixed = darts_cnn.MixedOp(3, 1, ("none", "max_pool_5x5", "skip_connect"), ops.OpOptions())
  got = mixed.apply({}, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  pooled = np_max_pool(x, 5, 1)
  want = w[1] * (np_batchnorm(pooled) if search_bn else pooled) + w[2] * x
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="already registered"):
    primitives.OPS.register("max_pool_5x5", _max_pool_5x5)


def test_remat_saves_memory_in_the_compiled_step():
  # Compiled as every jdarts step is (parallel.jit), the recomputed cells need
  # fewer temporaries than the stored ones, on XLA:CPU too, whose default
  # pipeline drops jax.checkpoint's barriers (remat then needed more memory, not
  # less). Measured 0.64 vs 0.81 MB; cells of one node keep the saving small.
  info = helpers.image_info()
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(8, 8, 8, 3), jnp.float32),
           "label": jnp.asarray(rng.randint(0, 10, 8), jnp.int32)}

  def temporaries(remat):
    space = spaces.get_space("darts_cnn", helpers.tiny_model(remat=remat, layers=2), info)
    # Shapes suffice to compile: no eager init.
    params = jax.eval_shape(space.init, jax.random.PRNGKey(0), batch)
    loss = lambda p, a: space.loss(p, a, batch, None, None)[0]
    compiled = parallel.jit(jax.grad(loss)).lower(
        params, space.init_alphas(jax.random.PRNGKey(1))).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  plain, remat = temporaries(False), temporaries(True)
  assert remat < 0.9 * plain, (remat, plain)


@pytest.mark.slow  # 14 s; tests/test_ops.py checks the same derivatives per convolution
def test_fused_depthwise_supernet_equals_the_dense_one(x64):
  """The fused depthwise form in a whole supernet: loss, both gradients and the
  exact HVP's mixed product (jvp over the weights of grad_alpha, which reaches
  convolutions the inner gradient does not) equal the dense form's, float64."""
  info = helpers.image_info()
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(2, 8, 8, 3)),
           "label": jnp.asarray(rng.randint(0, 10, 2), jnp.int32)}
  fused, dense = (spaces.get_space("darts_cnn", helpers.tiny_model(
      depthwise=impl, layers=2, dtype="float64"), info) for impl in ("fused", "dense"))
  params = dense.init(jax.random.PRNGKey(0), batch)
  alphas = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.randn(*a.shape)),
                                  dense.init_alphas(jax.random.PRNGKey(1)))
  v = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.randn(*a.shape), a.dtype), params)

  def derivatives(space):
    loss = lambda p, a: space.loss(p, a, batch, None, None)[0]
    grad_alpha = lambda p: jax.grad(loss, argnums=1)(p, alphas)
    return (jax.value_and_grad(loss, argnums=(0, 1))(params, alphas),
            jax.jvp(grad_alpha, (params,), (v,))[1])
  got, want = parallel.jit(lambda: derivatives(fused))(), parallel.jit(
      lambda: derivatives(dense))()
  leaves = jax.tree_util.tree_leaves
  assert len(leaves(got)) == len(leaves(want))
  for a, b in zip(leaves(got), leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11)
  assert max(float(jnp.abs(a).max()) for a in leaves(want[1])) > 0  # not trivially zero


@pytest.mark.slow
def test_remat_is_the_same_function():
  # model.remat only changes what the backward pass stores: the loss and every
  # gradient must equal the plain network's.
  info = helpers.image_info()
  plain = spaces.get_space("darts_cnn", helpers.tiny_model(), info)
  remat = spaces.get_space("darts_cnn", helpers.tiny_model(remat=True), info)
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(4, 8, 8, 3), jnp.float32),
           "label": jnp.asarray(rng.randint(0, 10, 4), jnp.int32)}
  params = plain.init(jax.random.PRNGKey(0), batch)
  alphas = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.randn(*a.shape), a.dtype),
                                  plain.init_alphas(jax.random.PRNGKey(1)))

  def value_and_grads(space):
    loss = lambda p, a: space.loss(p, a, batch, None, None)[0]
    return parallel.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, alphas)
  (l0, g0), (l1, g1) = value_and_grads(plain), value_and_grads(remat)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(g0[1]))
