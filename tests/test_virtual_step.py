"""The second-order virtual step (issue 11, part 1): the reference's by default.

quark0/darts `architect.py` (`_compute_unrolled_model`) forms
w' = w - eta * (momentum * buf + g + wd * w) with the *unclipped* gradient g.
The weight optimiser clips g first, so a virtual step built from it
differentiates through the clip whenever ||g|| > grad_clip, and `unrolled`,
`exact_hvp` and `finite_difference` then disagree. Here the clip is always
active (grad_clip = 1e-3) and every estimator is checked against the formula
written out by hand.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jdarts import config_lib, optim
from jdarts.hypergrad import arch_grad

LR, MOMENTUM, WD, CLIP = 0.2, 0.9, 3e-2, 1e-3


def _loss(params, alphas, batch):
  x, y = batch
  pre = x @ params["w1"] + params["b1"]
  act = jax.nn.softmax(alphas["act"])
  h = act[0] * jnp.tanh(pre) + act[1] * pre + act[2] * 0.5 * pre * pre
  out = jax.nn.softmax(alphas["out"])
  pred = out[0] * (h @ params["w2"]) + out[1] * (x @ params["skip"])
  return jnp.mean((pred - y) ** 2)


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def _rel_err(a, b):
  a, b = _flat(a), _flat(b)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture
def problem(x64):
  rng = np.random.default_rng(3)
  f = lambda *s, scale=0.7: jnp.asarray(rng.normal(size=s) * scale, jnp.float64)
  params = {"w1": f(4, 6), "b1": f(6, scale=0.2), "w2": f(6, 3), "skip": f(4, 3, scale=0.4)}
  alphas = {"act": f(3, scale=0.5), "out": f(2, scale=0.5)}
  tb, vb, b0 = [(f(8, 4, scale=1.0), f(8, 3, scale=1.0)) for _ in range(3)]
  cfg = ml_collections.ConfigDict(dict(grad_clip=CLIP, weight_decay=WD, momentum=MOMENTUM))
  schedule = lambda step: LR
  real = optim.weight_optimizer(cfg, schedule)
  # One real step first: a non-zero momentum buffer in the state.
  state = real.init(params)
  updates, state = real.update(jax.grad(_loss)(params, alphas, b0), state, params)
  params = optax.apply_updates(params, updates)
  buf = optax.tree_utils.tree_get(state, "trace")
  assert _flat(buf).std() > 1e-5
  g_norm = np.linalg.norm(_flat(jax.grad(_loss)(params, alphas, tb)))
  assert g_norm > 100 * CLIP  # the real update clips this step's gradient
  return cfg, schedule, params, alphas, tb, vb, state, buf


def _hand_unrolled(params, alphas, tb, vb, buf, clip=None, constant=False):
  """grad_alpha L_val(w'(alpha), alpha), w' written out; `clip`: clip g first,
  `constant`: the clip's coefficient not differentiated (rnn/architect.py)."""
  def objective(a):
    g = jax.grad(_loss)(params, a, tb)
    if clip is not None:
      norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(g)))
      coef = jnp.minimum(1.0, clip / norm)
      coef = jax.lax.stop_gradient(coef) if constant else coef
      g = jax.tree.map(lambda x: x * coef, g)
    w1 = jax.tree.map(lambda w, b, gi: w - LR * (MOMENTUM * b + gi + WD * w), params, buf, g)
    return _loss(w1, a, vb)
  return jax.grad(objective)(alphas)


def test_reference_virtual_step_with_the_clip_active(problem):
  cfg, schedule, params, alphas, tb, vb, state, buf = problem
  v = optim.virtual_step("reference", cfg, schedule)
  args = (_loss, _loss, params, alphas, tb, vb)
  kw = dict(xi=LR, optimizer=v.optimizer, opt_state=v.state_of(state))
  reference = _hand_unrolled(params, alphas, tb, vb, buf)
  unrolled = arch_grad("unrolled", *args, **kw)
  exact = arch_grad("exact_hvp", *args, **kw)
  fd = arch_grad("finite_difference", *args, fd_eps=1e-6, **kw)
  assert _rel_err(unrolled, reference) < 1e-12
  assert _rel_err(exact, reference) < 1e-12
  assert _rel_err(fd, reference) < 1e-6
  # The default of every search config is this step.
  assert config_lib.search_defaults().arch.virtual_step == "reference"


@pytest.mark.parametrize("kind, constant", [("real_update", False), ("clip_constant", True)])
def test_clipped_virtual_steps(problem, kind, constant):
  """'real_update' (the default before issue 11) differentiates through the clip;
  'clip_constant' (the recurrent reference's) holds its coefficient constant.
  Every estimator follows the step's own derivative: `exact_hvp` and
  `finite_difference` pull v back through the update (before, `exact_hvp`
  kept -xi v and was 0.2 off `unrolled` here)."""
  cfg, schedule, params, alphas, tb, vb, state, buf = problem
  v = optim.virtual_step(kind, cfg, schedule)
  args = (_loss, _loss, params, alphas, tb, vb)
  kw = dict(xi=LR, optimizer=v.optimizer, opt_state=v.state_of(state))
  want = _hand_unrolled(params, alphas, tb, vb, buf, clip=CLIP, constant=constant)
  assert _rel_err(arch_grad("unrolled", *args, **kw), want) < 1e-12
  assert _rel_err(arch_grad("exact_hvp", *args, **kw), want) < 1e-12
  assert _rel_err(arch_grad("finite_difference", *args, fd_eps=1e-6, **kw), want) < 1e-6
  # The two clipped steps and the unclipped reference are three different gradients.
  other = _hand_unrolled(params, alphas, tb, vb, buf, clip=CLIP, constant=not constant)
  assert _rel_err(want, other) > 1e-5  # round-off: 1e-12
  assert _rel_err(want, _hand_unrolled(params, alphas, tb, vb, buf)) > 1e-5
  # The virtual step's w' is the real update's, clip included, to round-off.
  real = optim.weight_optimizer(cfg, schedule)
  g = jax.grad(_loss)(params, alphas, tb)
  w_real = optax.apply_updates(params, real.update(g, state, params)[0])
  w_virtual = optax.apply_updates(params, v.optimizer.update(g, v.state_of(state), params)[0])
  assert _rel_err(w_virtual, w_real) < 1e-14


def test_old_virtual_step_name_is_refused(problem):
  cfg, schedule = problem[:2]
  with pytest.raises(config_lib.ConfigError, match="'optimizer' is now 'real_update'"):
    optim.virtual_step("optimizer", cfg, schedule)
