"""The multi-program search step (`arch.step_kind='staged_bilevel'`, `jdarts.staged`).

Its reference is the one-program 'bilevel' step with the same estimator: for
`finite_difference` and `exact_hvp`, on one device and under pmap and
shard_map on 2 fake devices and with K seeds, the staged step ends where
'bilevel' does; a search stopped and resumed through the CLI is
tests/test_toy_space.py's. The tests use the toy space of that file (a carry
split over devices, dropout, its own metrics), whose programs compile in
about a second.
"""
import jax
import numpy as np
import pytest

import helpers
import test_toy_space  # noqa: F401  (registers the toy space)
from jdarts import (config_lib, data, experiment, optim, parallel, schedules, search,
                    seeds, spaces)
from jdarts import staged

METHODS = ("finite_difference", "exact_hvp")


def _setup(dropout=0.1):
  """(toy space, config, weight and alpha optimisers, schedule)."""
  cfg = helpers.tiny_search_config()
  info = data.DatasetInfo("t", (8, 8, 1), 10, (0.5,), (0.25,))
  space = spaces.get_space("toy_mlp_cell", {"hidden": 8, "dropout": dropout}, info)
  sched = schedules.make_schedule(cfg.optim, 1, 10)
  w_opt, a_opt = optim.weight_optimizer(cfg.optim, sched), optim.arch_optimizer(cfg.arch)
  return space, cfg, w_opt, a_opt, sched


def _problem(method, kind, axis=None, dropout=0.1, correlation=True, seed=0):
  """(host state, per-device step, 4 batches) of the toy space."""
  space, cfg, w_opt, a_opt, sched = _setup(dropout)
  cfg.arch.method, cfg.arch.step_kind = method, kind
  rng = np.random.RandomState(0)
  batches = [{"image": rng.randn(8, 8, 8, 1).astype(np.float32),
              "label": rng.randint(0, 10, 8).astype(np.int32)} for _ in range(4)]
  state = search.init_state(space, jax.random.PRNGKey(seed), batches[0], w_opt, a_opt)
  step = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched, axis_name=axis,
                                 optim_cfg=cfg.optim, log_grad_correlation=correlation)
  return jax.device_get(state), step, batches


def _run(step, state, batches, backend="none", n=1, steps=2, compiles=None):
  """(state, metrics) after `steps` steps; `compiles` collects each step's XLA compiles."""
  ps = parallel.ParallelStep(step, backend=backend, devices=jax.local_devices()[:n])
  s = ps.put_state(state)
  events = []

  def listen(event, secs, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    for i in range(steps):
      s, m = ps(s, batches[(2 * i) % 4], batches[(2 * i + 1) % 4])
      if compiles is not None:
        compiles.append(len(events))
        events.clear()
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  return jax.device_get(ps.get_state(s)), jax.device_get(ps.get_metrics(m))


def _assert_close(a, b, rtol=2e-5, atol=2e-6):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("method", METHODS)
def test_staged_step_equals_the_one_program_step(method):
  """Same states and metrics after 2 steps, each stage compiled once and run as its own
  program: 'point' twice per step for finite differences, 'product' once for exact_hvp."""
  state, step, batches = _problem(method, "staged_bilevel")
  assert isinstance(step, staged.StagedStep)
  calls, traces = [], []

  def count(name, f):
    def traced(*args):
      traces.append(name)  # runs only when JAX traces the stage
      return f(*args)
    return traced
  counted = step.map(count)
  progs = {n: parallel.jit(f) for n, f in counted.stages.items()}

  def call(name, *args):
    calls.append(name)
    return progs[name](*args)
  s = state
  for i in range(2):
    s, m = counted.run(call, s, batches[2 * i], batches[2 * i + 1])
  got = jax.device_get((s, m))
  ref = _run(_problem(method, "bilevel")[1], state, batches)
  _assert_close(got, ref)
  assert "grad_correlation" in got[1]
  mixed = ["point", "point"] if method == "finite_difference" else ["product"]
  # 'grad' twice: the virtual step's gradient, then the weights' at the new alphas.
  assert calls == 2 * (["grad_correlation", "grad", "val"] + mixed
                       + ["alphas", "grad", "update"])
  assert sorted(traces) == sorted(set(calls))  # one trace per stage for both steps


def test_parallel_step_compiles_each_stage_apart():
  """ParallelStep runs the stages as programs of their own, the state donated to the
  last only (the earlier ones read it after it would have been consumed); called
  under jax.jit the step is one program with the same numbers."""
  state, step, batches = _problem("finite_difference", "staged_bilevel")
  ps = parallel.ParallelStep(step, backend="none")
  s = ps.put_state(state)
  leaf = jax.tree_util.tree_leaves(s.params)[0]
  ps(s, batches[0], batches[1])
  assert leaf.is_deleted()
  _assert_close(_run(step, state, batches), _run(jax.jit(step), state, batches))


def test_parallel_step_hands_back_the_heap_after_each_stage_compiles(monkeypatch):
  """Once per stage, after its first call (its compile), not on later steps: glibc
  would otherwise keep every stage's compiler garbage until the run's release."""
  from jdarts import host_memory
  calls = []
  monkeypatch.setattr(host_memory, "release", lambda: calls.append(1) or True)
  state, step, batches = _problem("finite_difference", "staged_bilevel", correlation=False)
  _run(step, state, batches, steps=2)
  assert len(calls) == len(step.stages) == 5


@pytest.mark.parametrize("backend", ["pmap", pytest.param("shard_map", marks=pytest.mark.slow)])
def test_staged_step_over_two_devices_equals_the_one_program_step(backend):
  """The carry's rows are split over the devices in the scratch as in the state."""
  results, compiles = [], []
  for kind in ("bilevel", "staged_bilevel"):
    state, step, batches = _problem("finite_difference", kind, axis=parallel.AXIS)
    results.append(_run(step, state, batches, backend, 2, compiles=compiles))
  _assert_close(*results)
  # The second staged step compiles nothing: 'grad' at the new alphas (an array
  # another program placed) reuses the program of the virtual step's gradient.
  assert compiles[2] >= len(step.stages) and compiles[3] == 0, compiles
  assert results[1][0].carry["train"].shape == (8, 8)


def test_staged_step_over_k_seeds_equals_the_one_program_step():
  """`seeds.vmap_step` maps every stage; scratch rows keep the batch axis first."""
  out = []
  for kind in ("bilevel", "staged_bilevel"):
    state, step, batches = _problem("exact_hvp", kind)
    stacked = seeds.stack_states([state, _problem("exact_hvp", kind, seed=1)[0]])
    out.append(_run(seeds.vmap_step(step, stacked, shared_batches=True), stacked, batches))
  _assert_close(*out)
  assert out[1][1]["val_loss"].shape == (2,)
  assert not np.allclose(out[1][0].alphas["cell"][0], out[1][0].alphas["cell"][1])


def test_staged_step_refuses_other_estimators():
  with pytest.raises(ValueError, match="'staged_bilevel' computes .*first_order.*bilevel"):
    _problem("first_order", "staged_bilevel")
  cfg = helpers.tiny_search_config()
  cfg.arch.step_kind = "staged_bilevel"
  with pytest.raises(config_lib.ConfigError, match="staged_bilevel.*first_order.*'auto'"):
    experiment.validate(cfg)
  with pytest.raises(ValueError, match="train and a val batch"):
    parallel.ParallelStep(_problem("exact_hvp", "staged_bilevel")[1], backend="none",
                          num_batches=1)
  step = _problem("exact_hvp", "staged_bilevel", correlation=False)[1]
  with pytest.raises(ValueError, match="metric stage 'val' would replace"):
    staged.with_metric_stage(step, "val", lambda *args: 0.0)


def test_auto_stages_second_order_steps_on_cpu_only():
  """'auto' stages the estimator it was measured faster for, where it was measured."""
  arch = config_lib.search_defaults().arch
  kinds = {}
  for method in ("first_order", "finite_difference", "exact_hvp", "single_level"):
    arch.method = method
    kinds[method] = (search.step_kind_for(arch, "cpu"), search.step_kind_for(arch, "gpu"))
  assert kinds == {"first_order": ("bilevel", "bilevel"),
                   "finite_difference": ("staged_bilevel", "bilevel"),
                   "exact_hvp": ("staged_bilevel", "bilevel"),
                   "single_level": ("single_level", "single_level")}
  arch.method, arch.step_kind = "finite_difference", "bilevel"
  assert search.step_kind_for(arch, "cpu") == "bilevel"  # a named kind is kept


@pytest.mark.slow  # 20-35 s each on 2 CPU cores (second-order compiles); --runslow
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", METHODS)
def test_staged_step_on_the_darts_supernet_equals_the_one_program_step(method):
  """The DARTS CNN supernet (separable convolutions, BatchNorm), float64, 2 steps:
  the stages run the fused depthwise form, the one-program step the dense one
  (`compile_light`), so the two differ by rounding only; float64 keeps eq. 8's
  quotient from magnifying float32's rounding into the comparison."""
  space = helpers.make_space(helpers.tiny_model(dtype="float64", layers=2, primitives=(
      "max_pool_3x3", "skip_connect", "sep_conv_3x3")), num_classes=3)
  _, cfg, w_opt, a_opt, sched = _setup()  # the toy problem's optimisers and schedule
  cfg.arch.method = method
  rng = np.random.RandomState(0)
  batches = [{"image": rng.randn(4, 8, 8, 1), "label": rng.randint(0, 3, 4).astype(np.int32)}
             for _ in range(4)]
  state = search.init_state(space, jax.random.PRNGKey(0), batches[0], w_opt, a_opt)
  wide = lambda x: x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x
  state = jax.tree_util.tree_map(wide, jax.device_get(state))
  state = state.replace(alphas=jax.tree_util.tree_map(
      lambda a: 0.3 * rng.randn(*a.shape), state.alphas))
  out = []
  for kind in ("bilevel", "staged_bilevel"):
    cfg.arch.step_kind = kind
    step = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched, optim_cfg=cfg.optim)
    out.append(_run(step, state, batches))
  assert jax.tree_util.tree_leaves(out[1][0].params)[0].dtype == np.float64
  _assert_close(*out, rtol=1e-9, atol=1e-11)
  assert out[1][1]["alpha_grad_norm"] > 0
