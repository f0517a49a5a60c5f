"""Data-parallel search step on fake CPU devices: pmap and shard_map on 1, 2 and 8
devices give the same state as one device on the same global batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdarts import config_lib, optim, parallel, schedules, search, spaces
import helpers


def _problem(axis_name, method="first_order", primitives=helpers.TINY_PRIMITIVES):
  cfg = config_lib.search_defaults()
  cfg.arch.learning_rate = 3e-2
  cfg.arch.method = method
  space = helpers.make_space(dict(helpers.tiny_model(primitives=primitives),
                                             num_classes=3, bn_axis_name=axis_name))
  rng = np.random.RandomState(0)
  batches = [{"image": rng.randn(8, 8, 8, 1).astype(np.float32),
              "label": rng.randint(0, 3, 8).astype(np.int32)} for _ in range(4)]
  sched = schedules.make_schedule(cfg.optim, 2, 5)
  w_opt, a_opt = optim.weight_optimizer(cfg.optim, sched), optim.arch_optimizer(cfg.arch)
  state = search.init_state(space, jax.random.PRNGKey(0), batches[0], w_opt, a_opt)
  step = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched, axis_name=axis_name,
                                 optim_cfg=cfg.optim)
  return state, step, batches


def _run(backend, n, method="first_order", **kw):
  axis = parallel.AXIS if backend != "none" else None
  state, step, batches = _problem(axis, method, **kw)
  traces = []

  def counted(*args):
    traces.append(1)  # runs only when JAX traces (compiles) the step
    return step(*args)

  ps = parallel.ParallelStep(counted, backend=backend, devices=jax.local_devices()[:n])
  s = ps.put_state(state)
  for i in range(3):
    s, m = ps(s, batches[(2 * i) % 4], batches[(2 * i + 1) % 4])
  # Same compiled program for every step: no retrace or recompilation after the first.
  assert len(traces) == 1, f"{backend} on {n} devices traced the step {len(traces)} times"
  return jax.device_get(ps.get_state(s)), jax.device_get(ps.get_metrics(m))


@pytest.fixture(scope="module")
def single():
  return _run("none", 1)


# One device through each wrapper (the search itself calls the step directly
# there), and both wrappers on 2 devices (8 devices stay), are checked with
# --runslow only, to keep the default suite short.
@pytest.mark.parametrize("backend,n", [
    pytest.param("pmap", 1, marks=pytest.mark.slow),
    pytest.param("pmap", 2, marks=pytest.mark.slow), ("pmap", 8),
    pytest.param("shard_map", 1, marks=pytest.mark.slow),
    pytest.param("shard_map", 2, marks=pytest.mark.slow), ("shard_map", 8)])
def test_parallel_step_equals_single_device(single, backend, n):
  """Three search steps over n devices equal one device on the same global batch."""
  assert jax.local_device_count() >= 8
  ref_state, ref_m = single
  state, m = _run(backend, n)
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  for k in ("train_loss", "val_loss", "train_accuracy"):
    np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, err_msg=k)
  assert int(state.step) == 3


@pytest.mark.slow  # minutes of second-order compilation on 2 CPU cores; --runslow
def test_second_order_step_on_devices_equals_single_device():
  """The virtual weight step inside the exact hypergradient uses the gradient
  averaged over all devices: 2 devices give the 1-device state."""
  # Parameter-free candidates: the weights of the stem, the preprocessing
  # convolutions and the classifier carry the second-order term, and the
  # second-order graphs compile several times faster without separable convs.
  light = dict(primitives=("none", "max_pool_3x3", "skip_connect", "avg_pool_3x3"))
  ref, _ = _run("none", 1, "exact_hvp", **light)
  state, _ = _run("shard_map", 2, "exact_hvp", **light)
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  moved = np.abs(np.asarray(state.alphas["normal"])).max()
  assert moved > 1e-3


def test_per_device_batchnorm_differs(single):
  """Control: without cross-device BN moments (ghost BN) the result differs, so
  the equality above really depends on the collectives."""
  ref, _ = single
  state, _, batches = _problem(None)
  # Per-device statistics, gradients still averaged: build the space without bn axis.
  cfg = config_lib.search_defaults()
  cfg.arch.learning_rate = 3e-2
  space = helpers.make_space(dict(helpers.tiny_model(), num_classes=3))
  sched = schedules.make_schedule(cfg.optim, 2, 5)
  w_opt, a_opt = optim.weight_optimizer(cfg.optim, sched), optim.arch_optimizer(cfg.arch)
  ghost = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched,
                                  axis_name=parallel.AXIS)
  ps = parallel.ParallelStep(ghost, backend="pmap", devices=jax.local_devices()[:2])
  s = ps.put_state(state)
  for i in range(3):  # the same steps and batches as `single`
    s, _ = ps(s, batches[(2 * i) % 4], batches[(2 * i + 1) % 4])
  s = jax.device_get(ps.get_state(s))
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree_util.tree_leaves(s.params), jax.tree_util.tree_leaves(ref.params)))
  assert diff > 1e-5


def test_indivisible_batch_is_a_clear_error():
  """A global batch that does not split over the devices names the fix."""
  with pytest.raises(ValueError, match="does not split over 8 devices"):
    parallel.check_divisible(12, 8)
  with pytest.raises(ValueError, match="parallel.backend"):
    parallel.ParallelStep(lambda s, a, b: (s, {}), backend="tpu_magic")


def _layers(ws, x):
  """Layers with intermediates inside each: what recomputation can drop."""
  for w in ws:
    x = jax.checkpoint(lambda w, x: jnp.tanh(jnp.tanh(jnp.tanh(x @ w) @ w) @ w) + x)(w, x)
  return jnp.sum(x ** 2)


def test_default_options_keep_checkpoint_barriers_on_cpu():
  """On XLA:CPU, jax.checkpoint saves memory only with the barriers kept."""
  ws = [jnp.full((64, 64), 0.01 * (i + 1), jnp.float32) for i in range(8)]
  x = jnp.ones((512, 64), jnp.float32)
  grad = jax.grad(_layers)
  kept = parallel.jit(grad).lower(ws, x).compile()
  plain = jax.jit(grad).lower(ws, x).compile()
  if jax.default_backend() != "cpu":
    assert parallel.default_compiler_options() == {}
    return
  assert "opt-barrier" in kept.as_text() and "opt-barrier" not in plain.as_text()
  temp = lambda c: c.memory_analysis().temp_size_in_bytes
  assert temp(kept) < 0.7 * temp(plain), (temp(kept), temp(plain))
  for a, b in zip(kept(ws, x), plain(ws, x)):
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("backend,n", [("none", 1), ("shard_map", 2), ("pmap", 2)])
def test_parallel_step_compiles_with_the_default_options(backend, n):
  """Every wrapper compiles the step keeping its barriers (pmap takes no options itself)."""
  def step(state, batch):
    y = jax.lax.optimization_barrier(batch["x"] * state["w"])
    return {"w": state["w"] + jnp.mean(y)}, {"m": jnp.mean(y)}
  ps = parallel.ParallelStep(step if backend == "none" else
                             lambda s, b: _pmean_step(step, s, b),
                             backend=backend, devices=jax.local_devices()[:n],
                             num_batches=1)
  assert ps.compiler_options == (parallel.default_compiler_options() or None)
  batch = {"x": np.arange(8, dtype=np.float32)}
  s = ps.put_state({"w": np.float32(1.0)})
  s, m = ps(s, batch)
  got = float(np.asarray(ps.get_state(s)["w"]))
  assert got == pytest.approx(1.0 + 3.5)
  if jax.default_backend() != "cpu":
    return
  if backend == "pmap":
    texts = [c.as_text() for c in ps._fn._compiled.values()]
  else:
    texts = [ps._fn.lower(ps.put_state({"w": np.float32(1.0)}), ps.put_batch(batch))
             .compile().as_text()]
  assert texts and all("opt-barrier" in t for t in texts)


def _pmean_step(step, state, batch):
  new, metrics = step(state, batch)
  return jax.lax.pmean((new, metrics), parallel.AXIS)
