"""Candidate operations (jdarts.ops, built through the DARTS space's registry) against references.

References: closed-form output sizes and parameter counts of the reference
PyTorch operations (quark0/darts `cnn/operations.py`: convolutions without
bias, 2C BatchNorm parameters when affine), and slow numpy loops for pooling,
depthwise convolution, search-time BatchNorm and FactorizedReduce.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdarts import genotypes, ops
from jdarts.spaces.darts_cnn import primitives
import helpers

EPS = 1e-5  # PyTorch's BatchNorm2d default, which OpOptions.bn_epsilon mirrors.


def _ceil_div(a, b):
  return -(-a // b)


def _leaf_names(tree):
  return {str(path[-1].key) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


# ---------------------------------------------------------------------------
# Slow numpy references (float64, explicit loops over output positions).
# ---------------------------------------------------------------------------

def np_pool(x, kind, stride, window=3):
  """3x3 pooling, padding 1; positions outside the image are skipped entirely.

  Skipping them is what -inf padding means for max and count_include_pad=False
  means for average.
  """
  N, H, W, C = x.shape
  p = window // 2
  Ho, Wo = (H + 2 * p - window) // stride + 1, (W + 2 * p - window) // stride + 1
  out = np.zeros((N, Ho, Wo, C))
  for i in range(Ho):
    for j in range(Wo):
      rows = [r for r in range(i * stride - p, i * stride - p + window) if 0 <= r < H]
      cols = [c for c in range(j * stride - p, j * stride - p + window) if 0 <= c < W]
      patch = x[:, rows][:, :, cols]
      out[:, i, j] = patch.max(axis=(1, 2)) if kind == "max" else patch.mean(axis=(1, 2))
  return out


def np_depthwise(x, kernel, stride, padding, dilation):
  """Direct depthwise convolution; kernel (k, k, 1, C). Returns (out, xp)."""
  k = kernel.shape[0]
  N, H, W, C = x.shape
  xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  Ho = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  Wo = (W + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  out = np.zeros((N, Ho, Wo, C))
  for ho in range(Ho):
    for wo in range(Wo):
      for i in range(k):
        for j in range(k):
          out[:, ho, wo, :] += (xp[:, ho * stride + i * dilation, wo * stride + j * dilation, :]
                                * kernel[i, j, 0, :])
  return out, xp


def np_depthwise_grads(x, kernel, g, stride, padding, dilation):
  """Gradients of sum(g * depthwise(x, kernel)) w.r.t. x and kernel, by hand."""
  k = kernel.shape[0]
  N, H, W, C = x.shape
  _, xp = np_depthwise(x, kernel, stride, padding, dilation)
  dxp, dk = np.zeros_like(xp), np.zeros_like(kernel)
  for ho in range(g.shape[1]):
    for wo in range(g.shape[2]):
      for i in range(k):
        for j in range(k):
          r, c = ho * stride + i * dilation, wo * stride + j * dilation
          dk[i, j, 0, :] += np.sum(g[:, ho, wo, :] * xp[:, r, c, :], axis=0)
          dxp[:, r, c, :] += g[:, ho, wo, :] * kernel[i, j, 0, :]
  return dxp[:, padding:padding + H, padding:padding + W, :], dk


def np_batchnorm(x, eps=EPS):
  """Per-channel normalisation with the biased batch variance over (N, H, W)."""
  mean = x.mean(axis=(0, 1, 2))
  var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + eps)


# ---------------------------------------------------------------------------
# Shapes and parameter counts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", primitives.OPS.names())
def test_every_registered_op_output_shape(name, stride, affine):
  """Closed form: (N, ceil(H / s), ceil(W / s), C), even and odd, non-square sizes."""
  C = 4
  for H, W in ((8, 6), (7, 5)):
    x = jax.ShapeDtypeStruct((2, H, W, C), jnp.float32)
    op = primitives.make_op(name, C, stride, affine)
    variables = jax.eval_shape(op.init, jax.random.PRNGKey(0), x)
    y = jax.eval_shape(op.apply, variables, x)
    assert y.shape == (2, _ceil_div(H, stride), _ceil_div(W, stride), C), (name, H, W)
    # Search-time operations hold weights only: no BatchNorm running statistics.
    assert set(variables) <= {"params"}
    if not affine:
      assert not {"scale", "bias"} & _leaf_names(variables)


def test_bad_stride_and_unknown_op_are_clear_errors():
  """Only strides 1 and 2 exist in DARTS cells; a typo names the close match."""
  with pytest.raises(ValueError, match="stride must be 1 or 2"):
    primitives.make_op("sep_conv_3x3", 4, 3, False)
  with pytest.raises(KeyError, match="dil_conv_3x3"):
    primitives.make_op("dil_conv3x3", 4, 1, False)


def _closed_form_count(name, C, stride, affine):
  """Parameter count of the reference PyTorch operation (operations.py)."""
  bn = 2 * C if affine else 0
  if name in ("none", "max_pool_3x3", "avg_pool_3x3"):
    return 0
  if name == "skip_connect":  # Identity, or FactorizedReduce(C, C): 2 x (C x C/2) 1x1.
    return 0 if stride == 1 else C * C + bn
  k = int(name[-1])
  if name.startswith("sep_conv"):  # two (k x k depthwise, 1x1 C->C, BN) blocks
    return 2 * (k * k * C + C * C + bn)
  if name.startswith("dil_conv"):  # k x k depthwise, 1x1 C->C, BN
    return k * k * C + C * C + bn
  if name == "conv_7x1_1x7":  # 1x7 C->C, 7x1 C->C, BN
    return 2 * 7 * C * C + bn
  raise AssertionError(name)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", genotypes.KNOWN_OPS)
def test_op_parameter_counts(name, stride, affine):
  """Hand-computed counts (no conv biases, BN 2C when affine), C = 16 as in the paper."""
  C = 16
  op = primitives.make_op(name, C, stride, affine)
  variables = jax.eval_shape(op.init, jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, 8, 8, C), jnp.float32))
  assert ops.count_params(variables) == _closed_form_count(name, C, stride, affine)


@pytest.mark.parametrize("affine", [True, False])
def test_building_block_parameter_counts_with_different_widths(affine):
  """Closed forms with C_in != C_out, so swapped channel roles would show."""
  C_in, C_out = 6, 10
  bn = 2 * C_out if affine else 0
  bn_in = 2 * C_in if affine else 0
  x = jax.ShapeDtypeStruct((1, 8, 8, C_in), jnp.float32)
  cases = [
      (ops.ReLUConvBN(C_out, 1, 1, 0, affine), C_in * C_out + bn),
      (ops.ReLUConvBN(C_out, 3, 2, 1, affine), 9 * C_in * C_out + bn),
      (ops.FactorizedReduce(C_out, affine), 2 * C_in * (C_out // 2) + bn),
      (ops.DilConv(C_out, 3, 1, 2, 2, affine), 9 * C_in + C_in * C_out + bn),
      # SepConv: DilConv(C_in -> C_in) then DilConv(C_in -> C_out).
      (ops.SepConv(C_out, 3, 2, 1, affine),
       9 * C_in + C_in * C_in + bn_in + 9 * C_in + C_in * C_out + bn),
  ]
  for module, expected in cases:
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    assert ops.count_params(variables) == expected, type(module).__name__


def test_none_and_identity():
  """'none' is exact zeros at the output size; 'skip_connect' at stride 1 is x."""
  x = jnp.asarray(np.random.RandomState(0).randn(2, 7, 6, 3), jnp.float32)
  np.testing.assert_array_equal(primitives.make_op("none", 3, 2, False).apply({}, x),
                                np.zeros((2, 4, 3, 3)))
  np.testing.assert_array_equal(primitives.make_op("skip_connect", 3, 1, False).apply({}, x), x)


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_pooling_against_numpy(stride):
  """Slow loops: max pads with -inf, average divides by the in-image count only."""
  rng = np.random.RandomState(stride)
  # All-negative inputs: zero padding would leak 0 into the border maxima.
  x_max = -1.0 - rng.rand(2, 7, 6, 3)
  # A large offset: counting the padding would shrink border averages visibly.
  x_avg = 5.0 + rng.randn(2, 7, 6, 3)
  for kind, x in (("max", x_max), ("avg", x_avg)):
    op = primitives.make_op(f"{kind}_pool_3x3", 3, stride, False)
    y = op.apply({}, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(y), np_pool(x, kind, stride), rtol=1e-6, atol=1e-6,
                               err_msg=kind)


# ---------------------------------------------------------------------------
# Depthwise convolution: every implementation against a direct numpy loop
# ---------------------------------------------------------------------------

# (kernel, stride, padding, dilation): sep_conv_3x3/5x5 and dil_conv_3x3/5x5 at
# strides 1 and 2.
DEPTHWISE_CASES = [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (3, 2, 2, 2),
                   (5, 2, 4, 2)]


@pytest.mark.parametrize("k,stride,padding,dilation", DEPTHWISE_CASES)
def test_depthwise_implementations_match_numpy(x64, k, stride, padding, dilation):
  """Forward and both gradients of each impl vs a direct numpy depthwise conv, in float64."""
  rng = np.random.RandomState(k + 10 * stride + 100 * dilation)
  C = 3
  x = rng.randn(2, 8, 7, C)
  kernel = rng.randn(k, k, 1, C)
  want, _ = np_depthwise(x, kernel, stride, padding, dilation)
  g = rng.randn(*want.shape)
  want_dx, want_dk = np_depthwise_grads(x, kernel, g, stride, padding, dilation)
  params = {"params": {"conv": {"kernel": jnp.asarray(kernel)}}}
  grads = {}
  for impl in ops.DEPTHWISE_IMPLS:
    module = ops.DepthwiseConv(k, stride, padding, dilation,
                               ops.OpOptions(depthwise=impl, dtype=jnp.float64))
    # Every implementation keeps its kernel at the same path with the same shape.
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.asarray(x))
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == {
        "params": {"conv": {"kernel": (k, k, 1, C)}}}, impl
    # One jit per implementation: eager differentiation of k*k slices is slow.
    loss = lambda p, xx, m=module: jnp.sum(m.apply(p, xx) * g)
    y, (dp, dx) = jax.jit(lambda p, xx, m=module: (
        m.apply(p, xx), jax.grad(loss, argnums=(0, 1))(p, xx)))(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-12, atol=1e-12, err_msg=impl)
    dk = dp["params"]["conv"]["kernel"]
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-12, atol=1e-12, err_msg=impl)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=1e-12, atol=1e-12, err_msg=impl)
    grads[impl] = (dx, dk)
  for impl in ops.DEPTHWISE_IMPLS[1:]:
    for a, b in zip(grads[impl], grads["xla"]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_depthwise_float32_implementations_agree():
  """float32 forward of the implementations agree, on a paper-sized kernel."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(1, 8, 8, 4), jnp.float32)
  kernel = rng.randn(5, 5, 1, 4).astype(np.float32)
  want, _ = np_depthwise(np.asarray(x, np.float64), kernel.astype(np.float64), 2, 4, 2)
  for impl in ("xla", "shift", "dense", "fused"):
    module = ops.DepthwiseConv(5, 2, 4, 2, ops.OpOptions(depthwise=impl))
    y = module.apply({"params": {"conv": {"kernel": kernel}}}, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5, err_msg=impl)


@pytest.mark.parametrize("k,stride,padding,dilation", [(5, 1, 2, 1), (3, 2, 2, 2)])
def test_fused_depthwise_second_derivatives_match_autodiff(x64, k, stride, padding, dilation):
  """The fused form's hand-written backward rule differentiates like XLA's own conv.

  The exact-HVP estimator takes jvp of grad (forward-over-reverse), also
  with respect to inputs the inner gradient does not differentiate (weights
  under grad_alpha), and the unrolled one grad of grad; all go through the
  custom_jvp's tangent map and JAX's transpose of it. Reference: plain
  autodiff of XLA's grouped convolution, float64.
  """
  rng = np.random.RandomState(k + stride)
  x = jnp.asarray(rng.randn(2, 9, 8, 3))
  w = jnp.asarray(rng.randn(k, k, 1, 3))
  v = (jnp.asarray(rng.randn(*x.shape)), jnp.asarray(rng.randn(*w.shape)))

  def derivatives(conv):
    f = lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
    grad = jax.grad(f, argnums=(0, 1))
    hvp = jax.jvp(grad, (x, w), v)[1]
    grad_of_grad = jax.grad(lambda x, w: jnp.sum(jax.grad(f, 1)(x, w) ** 2), (0, 1))(x, w)
    # d/da of f(x, w) * a is f: the inner grad never touches the convolution.
    outer_only = jax.jvp(lambda x, w: jax.grad(lambda a: a * f(x, w))(1.0), (x, w), v)[1]
    return grad(x, w) + hvp + grad_of_grad + (outer_only,)

  xla = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((padding, padding),) * 2, rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3)
  want = derivatives(xla)
  got = jax.jit(lambda: derivatives(
      lambda x, w: ops.depthwise_conv_fused(x, w, stride, padding, dilation)))()
  for name, a, b in zip(("dx", "dw", "hvp_x", "hvp_w", "ggx", "ggw", "outer_jvp"), got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10,
                               err_msg=name)


def test_fused_depthwise_keeps_dtypes_in_bfloat16():
  """bfloat16 compute: the input gradient is bfloat16, the kernel's float32 (its param)."""
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 8, 8, 4), jnp.float32)
  params = {"params": {"conv": {"kernel": jnp.asarray(rng.randn(3, 3, 1, 4), jnp.float32)}}}
  grads = {}
  for impl, dtype in (("fused", jnp.bfloat16), ("dense", jnp.float32)):
    module = ops.DepthwiseConv(3, 2, 1, 1, ops.OpOptions(depthwise=impl, dtype=dtype))
    loss = lambda p, xx, m=module: jnp.sum(jnp.tanh(m.apply(p, xx).astype(jnp.float32)))
    grads[impl] = jax.grad(lambda p, xx: loss(p, xx.astype(dtype)), (0, 1))(params, x)
  (dp, dx), (dp32, dx32) = grads["fused"], grads["dense"]
  assert dp["params"]["conv"]["kernel"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(dx), np.asarray(dx32), rtol=0.05, atol=0.05)
  np.testing.assert_allclose(np.asarray(dp["params"]["conv"]["kernel"]),
                             np.asarray(dp32["params"]["conv"]["kernel"]), rtol=0.05, atol=0.1)


def test_auto_depthwise_picks_by_backend_width_and_size(monkeypatch):
  """'auto' on CPU: XLA's grouped conv above 128 channels; below, the fused form
  from FUSED_MIN_POSITIONS input positions on, unless compile_light is active,
  the dense form otherwise; on GPU/TPU always XLA's. Named forms pass through."""
  from jdarts import depthwise
  big = depthwise.FUSED_MIN_POSITIONS
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert depthwise.resolve_depthwise("auto", 8) == "dense"  # size unknown
  assert depthwise.resolve_depthwise("auto", 8, big - 1) == "dense"
  assert depthwise.resolve_depthwise("auto", 8, big) == "fused"
  assert depthwise.resolve_depthwise("auto", 256, big) == "xla"
  assert depthwise.resolve_depthwise("fused", 256) == "fused"
  with depthwise.compile_light():
    assert depthwise.resolve_depthwise("auto", 8, big) == "dense"
    with depthwise.compile_light(False):  # an inner no-op does not lift it
      assert depthwise.resolve_depthwise("auto", 8, big) == "dense"
    assert depthwise.resolve_depthwise("fused", 8, big) == "fused"
  assert depthwise.resolve_depthwise("auto", 8, big) == "fused"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert depthwise.resolve_depthwise("auto", 8, big) == "xla"
  calls = []
  real = ops.depthwise_conv_fused
  monkeypatch.setattr(ops, "depthwise_conv_fused", lambda *a: (calls.append(a[2:]), real(*a))[1])
  ops.DepthwiseConv(3, 2, 1, 1, ops.OpOptions(depthwise="fused")).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))
  assert calls == [(2, 1, 1)]
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  conv = ops.DepthwiseConv(3, 1, 1, 1, ops.OpOptions(depthwise="auto"))
  jax.eval_shape(conv.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 63, 4)))
  assert len(calls) == 1  # 4032 positions: dense
  jax.eval_shape(conv.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 4)))
  assert calls == [(2, 1, 1), (1, 1, 1)]


def _count_depthwise_forms(monkeypatch):
  """Counts the fused and dense calls made while tracing, by form."""
  import collections
  calls = collections.Counter()
  for name in ("depthwise_conv_fused", "depthwise_conv_dense"):
    real = getattr(ops, name)
    monkeypatch.setattr(ops, name, lambda *a, n=name, f=real: (calls.update([n]), f(*a))[1])
  return calls


def _trace_search_step(calls, method, **model):
  """Traces (no compile) a search step of a 1-node supernet on one 64x64 image;
  clears `calls` first after the parameters' (abstract) initialisation."""
  from jdarts import config_lib, optim, schedules, search
  cfg = config_lib.search_defaults()
  cfg.arch.method = method
  space = helpers.make_space(helpers.tiny_model(**model), image_shape=(64, 64, 1))
  batch = {"image": jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32),
           "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
  sched = schedules.make_schedule(cfg.optim, epochs=1, steps_per_epoch=1)
  w_opt, a_opt = optim.weight_optimizer(cfg.optim, sched), optim.arch_optimizer(cfg.arch)
  state = jax.eval_shape(lambda b: search.init_state(space, jax.random.PRNGKey(0), b, w_opt,
                                                     a_opt), batch)
  step = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched, optim_cfg=cfg.optim)
  calls.clear()
  jax.make_jaxpr(step)(state, batch, batch)


@pytest.mark.parametrize("method,fused", [("first_order", True), ("single_level", True),
                                          ("exact_hvp", False), ("finite_difference", False),
                                          ("implicit_cg", False)])
def test_second_order_programs_trace_the_compile_light_form(monkeypatch, method, fused):
  """A search step on inputs large enough for 'fused' traces it only for first-order
  methods; second-order steps (their weight update included) hold dense forms only."""
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  calls = _count_depthwise_forms(monkeypatch)
  _trace_search_step(calls, method, primitives=("sep_conv_3x3",))
  assert calls["depthwise_conv_dense"] > 0  # the 32x32 and 16x16 cells
  assert (calls["depthwise_conv_fused"] > 0) == fused, dict(calls)


def test_batched_edges_pick_the_forms_the_per_edge_cell_picks(monkeypatch):
  """Same sizes, same form: batched and per-edge supernets compute the same numbers."""
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  calls = _count_depthwise_forms(monkeypatch)
  counts = []
  for batch_edges in (False, True):
    _trace_search_step(calls, "first_order", primitives=("sep_conv_3x3", "dil_conv_5x5"),
                       batch_edges=batch_edges)
    counts.append(calls["depthwise_conv_fused"])
  # Per edge (2 edges a cell): the normal cell's 3 depthwise layers read
  # 64x64 (4096 positions); the first reduce cell's first layers (sep, dil)
  # too, its sep conv's second layer 32x32 does not, nor the last cell:
  # 2 * (3 + 2) = 10 per loss, traced twice (alpha and weight gradients).
  assert counts == [20, 20], counts


def test_arch_grad_traces_second_order_methods_compile_light(monkeypatch):
  """Library users calling hypergrad.arch_grad get the same rule as the search step."""
  from jdarts import depthwise, hypergrad
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  seen = []

  def loss(p, a, b):
    seen.append(depthwise.resolve_depthwise("auto", 8, depthwise.FUSED_MIN_POSITIONS))
    return jnp.sum(p * a * b) ** 2
  x = jnp.arange(3.0)
  for method, form in (("first_order", "fused"), ("exact_hvp", "dense"),
                       ("unrolled", "dense"), ("implicit_neumann", "dense")):
    seen.clear()
    hypergrad.arch_grad(method, loss, loss, x, x, x, x, xi=0.01)
    assert set(seen) == {form}, (method, seen)


def test_unknown_depthwise_impl_is_a_clear_error():
  """OpOptions validates the implementation name and lists the choices."""
  with pytest.raises(ValueError, match="'dense'"):
    ops.OpOptions(depthwise="fast")


# ---------------------------------------------------------------------------
# Search-time BatchNorm
# ---------------------------------------------------------------------------

def test_search_batchnorm_uses_batch_statistics_and_holds_no_state():
  """numpy (x - mean) / sqrt(var + 1e-5) with biased variance; no state, any `train`."""
  rng = np.random.RandomState(0)
  # Per-channel offsets and scales, so a wrong reduction axis would show.
  x = rng.randn(3, 5, 4, 3) * np.array([0.5, 2.0, 3.0]) + np.array([1.0, -3.0, 4.0])
  xj = jnp.asarray(x, jnp.float32)
  bn = ops.BatchNorm(affine=False)
  assert not bn.init(jax.random.PRNGKey(0), xj)  # no params, no batch_stats
  for train in (True, False):
    np.testing.assert_allclose(np.asarray(bn.apply({}, xj, train)), np_batchnorm(x),
                               rtol=1e-4, atol=1e-4)

  bn_affine = ops.BatchNorm(affine=True)
  variables = bn_affine.init(jax.random.PRNGKey(0), xj)
  assert jax.tree_util.tree_map(jnp.shape, variables) == {
      "params": {"scale": (3,), "bias": (3,)}}
  scale, bias = rng.randn(3), rng.randn(3)
  y = bn_affine.apply({"params": {"scale": scale, "bias": bias}}, xj)
  np.testing.assert_allclose(np.asarray(y), np_batchnorm(x) * scale + bias,
                             rtol=1e-4, atol=1e-4)


def test_search_batchnorm_float64_is_exact(x64):
  """In float64 the one-pass moments agree with numpy's two-pass ones to round-off."""
  rng = np.random.RandomState(1)
  x = rng.randn(2, 4, 4, 5) * 3.0 + 2.0
  y = ops.BatchNorm(affine=False).apply({}, jnp.asarray(x))
  assert y.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(y), np_batchnorm(x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# FactorizedReduce
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("H,W", [(8, 6), (7, 5)])
def test_factorized_reduce_against_numpy(H, W):
  """Concat of 1x1 stride-2 convs of relu(x) at (0, 0) and at offset (1, 1), then BN.

  Even sizes are the reference's case; at odd sizes the offset path's last
  row/column lies past the image and is taken as zero.
  """
  rng = np.random.RandomState(H)
  C_in, C_out = 3, 4
  x = rng.randn(2, H, W, C_in)
  module = ops.FactorizedReduce(C_out, affine=False)
  params = module.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))["params"]
  w1 = np.asarray(params["Conv_0"]["kernel"], np.float64)[0, 0]  # (C_in, C_out / 2)
  w2 = np.asarray(params["Conv_1"]["kernel"], np.float64)[0, 0]
  r = np.maximum(x, 0.0)
  Ho, Wo = _ceil_div(H, 2), _ceil_div(W, 2)
  a = np.zeros((2, Ho, Wo, C_out // 2))
  b = np.zeros((2, Ho, Wo, C_out // 2))
  for i in range(Ho):
    for j in range(Wo):
      a[:, i, j] = r[:, 2 * i, 2 * j] @ w1
      if 2 * i + 1 < H and 2 * j + 1 < W:
        b[:, i, j] = r[:, 2 * i + 1, 2 * j + 1] @ w2
  want = np_batchnorm(np.concatenate([a, b], axis=-1))
  y = module.apply({"params": params}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)


def test_factorized_reduce_needs_even_channels():
  """Two equal halves need an even C_out; an odd one is a clear error."""
  with pytest.raises(ValueError, match="even C_out"):
    ops.FactorizedReduce(5).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))
