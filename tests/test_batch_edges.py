"""Per-source edge batching (model.batch_edges) against the per-edge supernet.

The batched cell must compute the same function as `SearchCell`: both
supernets are built with the same weights (mapped by
`darts_cnn.to_batched_params`) and must agree on logits and on gradients
w.r.t. alphas and weights, for every mixing, depthwise implementation,
reduction cells, and operations without a batched form (run per edge).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdarts import config_lib, genotypes, ops, spaces
from jdarts.spaces import darts_cnn
from jdarts.spaces.darts_cnn import batched_edges, primitives
import helpers

PRIMITIVES = genotypes.PRIMITIVES


def _tiny(**overrides):
  """normal, reduce, reduce: covers strided edges and FactorizedReduce inputs."""
  m = dict(init_channels=4, layers=3, steps=2, multiplier=2, stem_multiplier=1,
           primitives=PRIMITIVES)
  m.update(overrides)
  return m


def _both(model):
  """(per-edge space, batched space, per-edge params, the same params batched)."""
  info = helpers.image_info((8, 8, 3), 5)
  edge = spaces.get_space("darts_cnn", dict(model, batch_edges=False), info)
  batched = spaces.get_space("darts_cnn", dict(model, batch_edges=True), info)
  assert isinstance(batched.network, darts_cnn.Network) and batched.network.batch_edges
  dtype = jnp.dtype(model.get("dtype", "float32"))
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(4, 8, 8, 3), dtype),
           "label": jnp.asarray([0, 1, 2, 3], jnp.int32)}
  params = edge.init(jax.random.PRNGKey(0), batch)
  params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
  return edge, batched, params, darts_cnn.to_batched_params(params, edge.network), batch


def _random_alphas(space, dtype):
  # Non-uniform alphas so that every candidate and edge is weighted differently.
  rng = np.random.RandomState(1)
  return {k: jnp.asarray(rng.randn(*space.alpha_shape), dtype) for k in ("normal", "reduce")}


def _assert_same_function(model, tol):
  edge, batched, params, bparams, batch = _both(model)
  dtype = batch["image"].dtype
  alphas = _random_alphas(edge, dtype)

  def run(space, p):  # one compiled function: eager op-by-op would be far slower
    return jax.jit(lambda p, a: (space.apply(p, a, batch), jax.grad(
        lambda p, a: space.loss(p, a, batch, jax.random.PRNGKey(0), None)[0],
        argnums=(0, 1))(p, a)))(p, alphas)
  logits_edge, (g_edge_params, g_edge_alphas) = run(edge, params)
  logits, (g_params, g_alphas) = run(batched, bparams)
  np.testing.assert_allclose(logits, logits_edge, rtol=tol, atol=tol)
  for key in ("normal", "reduce"):
    np.testing.assert_allclose(g_alphas[key], g_edge_alphas[key], rtol=tol, atol=tol)
  # The gradient of the batched weights is the per-edge gradient, mapped.
  want = darts_cnn.to_batched_params(g_edge_params, edge.network)
  assert jax.tree_util.tree_structure(g_params) == jax.tree_util.tree_structure(want)
  for (path, got), w in zip(jax.tree_util.tree_leaves_with_path(g_params),
                            jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(got, w, rtol=tol, atol=tol,
                               err_msg=jax.tree_util.keystr(path))


def test_batched_cells_compute_the_per_edge_function():
  """Every DARTS primitive, default (CPU: dense) depthwise, one reduction cell
  (strided edges from the inputs, unstrided from the nodes, two edges per
  source): logits and gradients agree."""
  _assert_same_function(_tiny(layers=1), tol=1e-5)


@pytest.mark.slow
def test_batched_normal_and_reduction_cells_compute_the_per_edge_function():
  """normal, reduce, reduce: also FactorizedReduce inputs after a reduction."""
  _assert_same_function(_tiny(), tol=1e-5)


# Compile time grows with the number of ops, so the variants below use one
# reduction cell (strided and unstrided sources) and fewer candidates; each
# still runs shared-input and per-edge depthwise convolutions, pooling and
# FactorizedReduce.
SMALL = dict(layers=1, primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3",
                                   "dil_conv_5x5"))


@pytest.mark.slow
@pytest.mark.parametrize("mix,depthwise", [("sigmoid", "xla"), ("max_w", "shift")])
def test_other_mixings_and_depthwise_implementations(mix, depthwise):
  _assert_same_function(_tiny(mixing=mix, depthwise=depthwise, **SMALL), tol=1e-5)


@pytest.mark.slow
def test_batched_four_node_cell_exact_in_float64(x64):
  """The paper's 4-node cell; in float64 the two differ only by summation order."""
  _assert_same_function(_tiny(steps=4, multiplier=4, dtype="float64", **SMALL), tol=1e-10)


def test_operations_without_a_batched_form_run_per_edge():
  """An operation missing from BATCHED_CANDIDATES (conv_7x1_1x7) goes through nn.vmap."""
  assert batched_edges.batched_candidate("conv_7x1_1x7") is None
  _assert_same_function(_tiny(layers=1, primitives=("none", "conv_7x1_1x7", "avg_pool_3x3")),
                        tol=1e-5)


def test_user_op_with_search_bn_runs_per_edge_with_its_bn(monkeypatch):
  """A user-registered pooling (no batched form) gets the search BN per edge as
  MixedOp gives it, and a built-in re-registered with other metadata loses
  its batched form."""
  monkeypatch.setattr(primitives.OPS, "_entries", dict(primitives.OPS._entries))
  monkeypatch.setattr(primitives.OPS, "_info", dict(primitives.OPS._info))
  primitives.OPS.register("avg_pool_5x5", lambda C, stride, affine, opts:
                          ops.Pool("avg", stride, window=5),
                          parameter_free=True, search_bn=True)
  assert batched_edges.batched_candidate("avg_pool_5x5") is None
  edge, batched, params, bparams, batch = _both(_tiny(layers=1,
                                                      primitives=("none", "avg_pool_5x5")))
  alphas = _random_alphas(edge, jnp.float32)
  want = edge.apply(params, alphas, batch)
  np.testing.assert_allclose(batched.apply(bparams, alphas, batch), want, rtol=1e-5, atol=1e-5)
  assert batched_edges.batched_candidate("max_pool_3x3") == "max"
  primitives.OPS.register("max_pool_3x3", primitives.OPS.get("max_pool_3x3"),
                          overwrite=True, parameter_free=True, search_bn=False)
  assert batched_edges.batched_candidate("max_pool_3x3") is None


def test_only_parameter_free_candidates():
  """Pooling/identity only: no source parameters at all, same logits."""
  edge, batched, params, bparams, batch = _both(_tiny(primitives=("none", "max_pool_3x3")))
  assert not any(k.startswith("source_") for k in bparams["cell_0"])
  alphas = _random_alphas(edge, jnp.float32)
  np.testing.assert_allclose(batched.apply(bparams, alphas, batch),
                             edge.apply(params, alphas, batch), rtol=1e-5, atol=1e-5)


def test_paper_supernet_same_parameter_count_and_mapped_layout():
  """1,930,618 weights either way; the mapping yields exactly the batched init's tree."""
  model = dict(init_channels=16, layers=8)
  info = helpers.image_info((32, 32, 3), 10)
  edge = spaces.get_space("darts_cnn", model, info)
  batched = spaces.get_space("darts_cnn", dict(model, batch_edges=True), info)
  batch = {"image": jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)}
  p_edge = jax.eval_shape(lambda b: edge.init(jax.random.PRNGKey(0), b), batch)
  p_batched = jax.eval_shape(lambda b: batched.init(jax.random.PRNGKey(0), b), batch)
  assert ops.count_params(p_edge) == ops.count_params(p_batched) == 1_930_618
  mapped = jax.eval_shape(lambda p: darts_cnn.to_batched_params(p, edge.network), p_edge)
  assert (jax.tree_util.tree_map(lambda x: x.shape, mapped)
          == jax.tree_util.tree_map(lambda x: x.shape, p_batched))
  # A normal cell: s0 and s1 feed 4 nodes each, node i feeds the 3 - i later ones.
  cell = p_batched["cell_0"]
  assert sorted(k for k in cell if k.startswith("source_")) == [f"source_{j}" for j in range(5)]
  kernel = cell["source_2"]["sep_conv_5x5"]["DilConv_1"]["DepthwiseConv_0"]["conv"]["kernel"]
  assert kernel.shape == (3, 5, 5, 1, 16)


def test_mapping_round_trip_and_errors():
  edge, _, params, bparams, _ = _both(_tiny())
  back = darts_cnn.from_batched_params(bparams, edge.network)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  # Edge e of node i from state j sits at row t of source_j (targets in order).
  for j in range(3):
    for t, (i, e) in enumerate(darts_cnn.edges_from_source(j, 2)):
      np.testing.assert_array_equal(
          bparams["cell_0"][f"source_{j}"]["dil_conv_3x3"]["Conv_0"]["kernel"][t],
          params["cell_0"][f"MixedOp_{e}"]["DilConv_0"]["Conv_0"]["kernel"])
  with pytest.raises(ValueError, match="already in the batched layout"):
    darts_cnn.to_batched_params(bparams, edge.network)
  other = edge.network.clone(primitives=("none", "max_pool_3x3", "skip_connect"))
  with pytest.raises(ValueError, match="belong to none of the primitives"):
    darts_cnn.to_batched_params(params, other)


def test_config_key_defaults_off():
  cfg = config_lib.search_defaults()
  assert cfg.model.batch_edges is False
  assert not spaces.get_space("darts_cnn", cfg.model, helpers.image_info()).network.batch_edges


def test_init_skips_the_forward_but_creates_the_same_parameters(monkeypatch):
  """`init` creates the stacked parameters without computing the edges (the eager
  forward compiled one program per op shape): the same tree, bitwise, as an init
  that computes them; each edge's copy is its own draw within the per-edge bound."""
  # One reduction cell: strided edges, FactorizedReduce and a per-edge (vmap) op.
  model = _tiny(layers=1, primitives=("none", "max_pool_3x3", "skip_connect",
                                      "sep_conv_3x3", "conv_7x1_1x7"))
  batched = spaces.get_space("darts_cnn", dict(model, batch_edges=True),
                             helpers.image_info((8, 8, 3), 5))
  batch = {"image": jnp.zeros((4, 8, 8, 3)), "label": jnp.zeros((4,), jnp.int32)}
  fast = batched.init(jax.random.PRNGKey(3), batch)
  monkeypatch.setattr(batched_edges.SourceEdges, "is_initializing", lambda self: False)
  full = batched.init(jax.random.PRNGKey(3), batch)
  assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(full)
  for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(full)):
    np.testing.assert_array_equal(a, b)
  # Source 0 of a 2-node cell feeds 2 edges; a reduction cell has 2C = 8 channels.
  kernel = np.asarray(fast["cell_0"]["source_0"]["sep_conv_3x3"]["DilConv_0"]["Conv_0"]["kernel"])
  assert kernel.shape == (2, 1, 1, 8, 8)
  bound = 1 / np.sqrt(8)  # PyTorch's U(+-1/sqrt(fan_in)), fan_in of one edge's 1x1 conv
  assert 0.5 * bound < np.abs(kernel).max() <= bound
  assert not np.array_equal(kernel[0], kernel[1])
