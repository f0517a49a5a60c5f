"""Search step: fused vs unfused first order, second-order estimators in the step,
loss decrease on a tiny problem, optimiser settings against hand-written updates."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdarts import config_lib, optim, schedules, search, spaces
from jdarts.spaces import darts_cnn
import helpers


# Parameter-free candidates: the second-order graphs compile several times
# faster; the stem, preprocessing and classifier weights carry the HVP.
LIGHT = ("none", "max_pool_3x3", "skip_connect", "avg_pool_3x3")


def _setup(method="first_order", batch=4, seed=0, primitives=helpers.TINY_PRIMITIVES,
           **arch):
  cfg = config_lib.search_defaults()
  cfg.arch.method = method
  cfg.arch.update(arch)
  cfg.arch.learning_rate = 3e-2
  space = helpers.make_space(dict(helpers.tiny_model(primitives=primitives),
                                             num_classes=3))
  rng = np.random.RandomState(seed)
  def batch_of(k):
    return {"image": jnp.asarray(rng.randn(batch, 8, 8, 1), jnp.float32),
            "label": jnp.asarray(rng.randint(0, 3, batch), jnp.int32)}
  sched = schedules.make_schedule(cfg.optim, epochs=2, steps_per_epoch=5)
  w_opt = optim.weight_optimizer(cfg.optim, sched)
  a_opt = optim.arch_optimizer(cfg.arch)
  state = search.init_state(space, jax.random.PRNGKey(seed), batch_of(0), w_opt, a_opt)
  # Non-zero alphas so every estimator has something to move.
  state = state.replace(alphas=jax.tree_util.tree_map(
      lambda a: 0.1 * jnp.asarray(rng.randn(*a.shape), a.dtype), state.alphas))
  return cfg, space, w_opt, a_opt, sched, state, [batch_of(k) for k in range(6)]


def _tree_close(a, b, **kw):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.mark.slow  # fuse_first_order is off by default (a trap on CPU); ~12 s
def test_fused_first_order_equals_two_separate_gradients():
  """The one-compile scan step gives the same state as alpha-then-weight updates."""
  cfg, space, w_opt, a_opt, sched, state, b = _setup()
  fused_arch = cfg.arch.copy_and_resolve_references()
  fused_arch.step_kind = "fused_first_order"
  assert search.step_kind_for(cfg.arch) == "bilevel"
  fused = jax.jit(search.make_search_step(space, fused_arch, w_opt, a_opt, sched))
  plain = jax.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched))
  s1, s2 = state, state
  for i in range(2):
    before = np.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2))
                         for x in jax.tree_util.tree_leaves(s2.params)))
    s1, m1 = fused(s1, b[2 * i], b[2 * i + 1])
    s2, m2 = plain(s2, b[2 * i], b[2 * i + 1])
    # param_norm: the norm of the weights the step started from (numpy, float64).
    np.testing.assert_allclose(float(m2["param_norm"]), before, rtol=1e-5)
  # float32 round-off of two differently fused graphs: ~1e-6 absolute.
  _tree_close(s1.params, s2.params, rtol=1e-4, atol=1e-5)
  _tree_close(s1.alphas, s2.alphas, rtol=1e-4, atol=1e-5)
  _tree_close(s1.w_opt_state, s2.w_opt_state, rtol=1e-4, atol=1e-5)
  assert int(s1.step) == 2
  for k in ("train_loss", "val_loss", "train_accuracy", "alpha_grad_norm", "grad_norm",
            "param_norm"):
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, err_msg=k)
  # The alphas moved, so the comparison above is not vacuous.
  assert float(jnp.abs(s1.alphas["normal"] - state.alphas["normal"]).max()) > 1e-3


def test_first_order_step_matches_hand_written_updates():
  """One step equals Adam(+L2) on alphas at the val batch, then clipped SGD on weights."""
  # The update rules, not the operations, are under test: the light primitives
  # compile in a fraction of the full set's time.
  cfg, space, w_opt, a_opt, sched, state, b = _setup(primitives=LIGHT)
  # A clip below this problem's gradient norm (~3), so the clip is exercised
  # (the optimiser state's structure does not depend on it).
  cfg.optim.grad_clip = 1.0
  w_opt = optim.weight_optimizer(cfg.optim, sched)
  step = jax.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched))
  new, _ = step(state, b[0], b[1])
  loss = lambda p, a, batch: space.loss(p, a, batch, None, None)[0]
  # Alphas: torch Adam with weight_decay (L2 added to the gradient), first step.
  # Jitted: eagerly, every primitive of the supernet's gradient compiles alone.
  g_a = jax.jit(jax.grad(loss, 1))(state.params, state.alphas, b[1])
  a, arch = state.alphas, cfg.arch
  def adam_first(x, g):
    g = g + arch.weight_decay * x
    m, v = (1 - arch.b1) * g, (1 - arch.b2) * g * g
    mhat, vhat = m / (1 - arch.b1), v / (1 - arch.b2)
    return x - arch.learning_rate * mhat / (jnp.sqrt(vhat) + 1e-8)
  ref_alphas = jax.tree_util.tree_map(adam_first, a, g_a)
  _tree_close(new.alphas, ref_alphas, rtol=1e-5, atol=1e-6)
  # Weights: clip to the norm, add wd*w, momentum buffer starts at g: w - lr*g.
  g_w = jax.jit(jax.grad(loss, 0))(state.params, ref_alphas, b[0])
  norm = optax.tree_utils.tree_norm(g_w)
  assert norm > 1.5 * cfg.optim.grad_clip, "the clip would not act"
  scale = jnp.minimum(1.0, cfg.optim.grad_clip / norm)
  lr = cfg.optim.learning_rate
  ref_params = jax.tree_util.tree_map(
      lambda w, g: w - lr * (g * scale + cfg.optim.weight_decay * w), state.params, g_w)
  _tree_close(new.params, ref_params, rtol=1e-4, atol=1e-6)


def test_search_steps_reduce_training_loss():
  """Ten steps on a fixed tiny problem lower the training loss."""
  cfg, space, w_opt, a_opt, sched, state, b = _setup(batch=8)
  step = jax.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched))
  first = float(space.loss(state.params, state.alphas, b[0], None, None)[0])
  for _ in range(10):
    state, m = step(state, b[0], b[1])
  last = float(space.loss(state.params, state.alphas, b[0], None, None)[0])
  assert last < 0.7 * first, (first, last)


def test_exact_hvp_step_equals_unrolled_step():
  """In the search step, exact_hvp (eq. 7 by jvp) equals autodiff through the
  virtual SGD step (eq. 6), so both move the alphas identically."""
  cfg, space, w_opt, a_opt, sched, state, b = _setup("unrolled", virtual_step="sgd",
                                                      primitives=LIGHT)
  ref = jax.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched))
  cfg.arch.method = "exact_hvp"
  other = jax.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched))
  s_ref, m_ref = ref(state, b[0], b[1])
  s_oth, m_oth = other(state, b[0], b[1])
  np.testing.assert_allclose(m_oth["alpha_grad_norm"], m_ref["alpha_grad_norm"], rtol=1e-4)
  _tree_close(s_oth.alphas, s_ref.alphas, rtol=1e-4, atol=1e-6)
  # The second-order term matters here: first order moves the alphas differently.
  cfg.arch.method = "first_order"
  fo = jax.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched))
  _, m_fo = fo(state, b[0], b[1])
  assert abs(float(m_fo["alpha_grad_norm"]) - float(m_ref["alpha_grad_norm"])) > 1e-3


@pytest.mark.slow  # minutes of second-order compilation on 2 CPU cores; --runslow
@pytest.mark.usefixtures("x64")
def test_finite_differences_on_the_supernet_need_a_small_eps():
  """float64, real supernet: eq. 8 converges to the exact HVP result once the
  perturbation is small enough not to cross ReLU/max-pool kinks; the paper's
  0.01/||v|| can be far off (the reason the exact estimator exists)."""
  from jdarts import hypergrad
  space = helpers.make_space(dict(helpers.tiny_model(dtype="float64",
                                                               primitives=LIGHT),
                                             num_classes=3))
  rng = np.random.RandomState(0)
  batch = lambda: {"image": jnp.asarray(rng.randn(4, 8, 8, 1)),
                   "label": jnp.asarray(rng.randint(0, 3, 4))}
  tb, vb = batch(), batch()
  p = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64),
                             space.init(jax.random.PRNGKey(0), tb))
  a = jax.tree_util.tree_map(lambda x: 0.1 * jnp.asarray(rng.randn(*x.shape)),
                             space.init_alphas(jax.random.PRNGKey(1)))
  L = lambda p, a, b: space.loss(p, a, b, None, None)[0]
  # Jitted (fd_eps traced, so one compilation serves every eps): op-by-op
  # float64 execution of the second-order graphs is several times slower.
  jitted = {m: jax.jit(lambda p, a, e, m=m: hypergrad.arch_grad(
      m, L, L, p, a, tb, vb, xi=0.025, fd_eps=e)) for m in
            ("unrolled", "exact_hvp", "finite_difference")}
  est = lambda m, fd_eps=1e-2: jitted[m](p, a, jnp.float64(fd_eps))
  ref = est("unrolled")
  err = lambda g: max(float(jnp.abs(x - y).max()) for x, y in
                      zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref)))
  assert err(est("exact_hvp")) < 1e-12
  assert err(est("finite_difference", fd_eps=1e-7)) < 1e-6
  # Recorded behaviour at the paper's eps on this network (not a requirement).
  paper = err(est("finite_difference", fd_eps=1e-2))
  assert paper > 1e-4, paper


def test_unknown_method_is_a_clear_error():
  """An unknown arch method names the known ones."""
  cfg, space, w_opt, a_opt, sched, *_ = _setup()
  cfg.arch.method = "zeroth_order"
  with pytest.raises(ValueError, match="Unknown arch.method 'zeroth_order'.*exact_hvp"):
    search.make_search_step(space, cfg.arch, w_opt, a_opt, sched)


def test_weight_schedule_is_the_reference_per_epoch_cosine():
  """lr(epoch) = lr_min + (lr - lr_min)(1 + cos(pi e / E)) / 2, constant within an epoch."""
  cfg = config_lib.search_defaults()
  sched = schedules.make_schedule(cfg.optim, epochs=50, steps_per_epoch=10)
  for step in (0, 9, 10, 255, 499):
    e = step // 10
    want = 0.001 + (0.025 - 0.001) * (1 + np.cos(np.pi * e / 50)) / 2
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6)
