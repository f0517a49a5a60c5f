"""Tests for jdarts.hypergrad against closed forms and independent references.

References: closed-form hypergradients of a quadratic bilevel problem and of the
DARTS Figure 2 toy problem, central finite differences in float64, a
hand-written momentum/weight-decay virtual step, and single-device full-batch
results for the multi-device runs.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec as P

from jdarts import hypergrad, solvers
from jdarts.hypergrad import arch_grad


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def _rel_err(a, b):
  a, b = _flat(a), _flat(b)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


# ---------------------------------------------------------------------------
# Quadratic bilevel problem with a closed-form solution. params and alphas are
# split into several leaves so the pytree handling is exercised too.


class Quadratic:
  """L_train = 0.5 w'Aw - w'Ba,  L_val = 0.5||w - c||^2 + 0.5 a'Da."""

  def __init__(self, n=5, m=3, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    self.A = q @ np.diag(np.linspace(1.0, 3.0, n)) @ q.T  # SPD, lambda in [1, 3]
    self.B = rng.normal(size=(n, m))
    d = rng.normal(size=(m, m))
    self.D = d @ d.T + np.eye(m)
    self.c = rng.normal(size=n)
    self.a = rng.normal(size=m)
    self.w = rng.normal(size=n)

  @staticmethod
  def to_params(w):
    return {"head": jnp.asarray(w[:2]), "tail": jnp.asarray(w[2:])}

  @staticmethod
  def to_alphas(a):
    return (jnp.asarray(a[:1]), {"rest": jnp.asarray(a[1:])})

  @staticmethod
  def vec_w(params):
    return jnp.concatenate([params["head"], params["tail"]])

  @staticmethod
  def vec_a(alphas):
    return jnp.concatenate([alphas[0], alphas[1]["rest"]])

  def train_loss(self, params, alphas, batch):
    del batch
    w, a = self.vec_w(params), self.vec_a(alphas)
    return 0.5 * w @ self.A @ w - w @ self.B @ a

  def val_loss(self, params, alphas, batch):
    del batch
    w, a = self.vec_w(params), self.vec_a(alphas)
    return 0.5 * jnp.sum((w - self.c)**2) + 0.5 * a @ self.D @ a

  def grad(self, method, w, **kw):
    g = arch_grad(method, self.train_loss, self.val_loss, self.to_params(w),
                  self.to_alphas(self.a), None, None, **kw)
    return np.asarray(self.vec_a(g))


@pytest.mark.usefixtures("x64")
def test_implicit_matches_closed_form_at_inner_optimum():
  q = Quadratic()
  w_star = np.linalg.solve(q.A, q.B @ q.a)
  expected = q.D @ q.a + np.linalg.solve(q.A, q.B).T @ (w_star - q.c)
  cg = q.grad("implicit_cg", w_star, cg_iters=10, cg_damping=0.0)
  neumann = q.grad("implicit_neumann", w_star, neumann_terms=80,
                   neumann_lr=0.4)
  np.testing.assert_allclose(cg, expected, rtol=0, atol=1e-8)
  np.testing.assert_allclose(neumann, expected, rtol=0, atol=1e-8)
  # A short series is visibly truncated, so the check above has teeth.
  short = q.grad("implicit_neumann", w_star, neumann_terms=2, neumann_lr=0.4)
  assert np.abs(short - expected).max() > 1e-3


@pytest.mark.usefixtures("x64")
def test_unrolled_solvers_equal_the_loops():
  """unroll_solver=True traces the iterations one by one: same closed form,
  same value as the fori_loop to round-off, and no loop in the program."""
  q = Quadratic(seed=2)
  lam = 0.3
  expected = q.D @ q.a + q.B.T @ np.linalg.solve(q.A + lam * np.eye(5), q.w - q.c)
  for method, kw in [("implicit_cg", dict(cg_iters=10, cg_damping=lam)),
                     ("implicit_neumann", dict(neumann_terms=7, neumann_lr=0.4))]:
    looped = q.grad(method, q.w, **kw)
    unrolled = q.grad(method, q.w, unroll_solver=True, **kw)
    np.testing.assert_allclose(unrolled, looped, rtol=1e-12, atol=1e-12)
    if method == "implicit_cg":
      np.testing.assert_allclose(unrolled, expected, atol=1e-10)
    f = lambda w, u: arch_grad(method, q.train_loss, q.val_loss, q.to_params(w),
                               q.to_alphas(q.a), None, None, unroll_solver=u, **kw)
    has_loop = lambda u: any(p in str(jax.make_jaxpr(lambda w: f(w, u))(q.w))
                             for p in ("while[", "scan["))
    assert has_loop(False) and not has_loop(True)


@pytest.mark.usefixtures("x64")
def test_implicit_away_from_optimum_and_damping():
  q = Quadratic(seed=1)
  lam = 0.5
  expected = (q.D @ q.a +
              q.B.T @ np.linalg.solve(q.A + lam * np.eye(5), q.w - q.c))
  np.testing.assert_allclose(
      q.grad("implicit_cg", q.w, cg_iters=10, cg_damping=lam), expected,
      atol=1e-10)
  undamped = q.D @ q.a + q.B.T @ np.linalg.solve(q.A, q.w - q.c)
  np.testing.assert_allclose(q.grad("implicit_cg", q.w, cg_iters=10,
                                   cg_damping=0.0),
                             undamped, atol=1e-10)
  # neumann_lr defaults to xi.
  np.testing.assert_allclose(
      q.grad("implicit_neumann", q.w, neumann_terms=80, xi=0.4), undamped,
      atol=1e-8)


@pytest.mark.usefixtures("x64")
def test_implicit_cg_default_damping_is_small_and_positive():
  """With the default damping d, CG solves (A + d I) x = b, and
  x - A^{-1} b = -d (A + d I)^{-1} A^{-1} b has norm at most
  d / (lambda_min + d) ||A^{-1} b|| (lambda_min = 1 here), so the
  hypergradient moves by at most ||B||_2 times that from the undamped one."""
  q = Quadratic(seed=1)
  d = solvers.CG_DAMPING
  b = q.w - q.c
  undamped_x = np.linalg.solve(q.A, b)
  damped = q.D @ q.a + q.B.T @ np.linalg.solve(q.A + d * np.eye(5), b)
  undamped = q.D @ q.a + q.B.T @ undamped_x
  got = q.grad("implicit_cg", q.w, cg_iters=10)
  np.testing.assert_allclose(got, damped, rtol=0, atol=1e-10)
  bound = np.linalg.norm(q.B, 2) * d / (1.0 + d) * np.linalg.norm(undamped_x)
  shift = np.linalg.norm(got - undamped)
  assert 1e-6 < shift <= bound, (shift, bound)  # positive, and as small as said
  assert bound < 1e-2 * np.linalg.norm(undamped)


@pytest.mark.usefixtures("x64")
def test_implicit_cg_stops_at_negative_curvature():
  """Indefinite H: CG takes one step, meets p.Hp < 0 and returns x_1."""
  q = Quadratic(seed=0)
  rot, _ = np.linalg.qr(np.random.default_rng(100).normal(size=(5, 5)))
  q.A = rot @ np.diag([3.0, 2.0, 1.0, -0.5, -2.0]) @ rot.T
  b = q.w - q.c  # grad_w L_val, the right-hand side
  x1 = (b @ b) / (b @ q.A @ b) * b  # the first CG iterate (b.Ab > 0 here)
  r1 = b - q.A @ x1
  p1 = r1 + (r1 @ r1) / (b @ b) * b
  assert b @ q.A @ b > 0 and p1 @ q.A @ p1 < 0  # the case under test
  expected = q.D @ q.a + q.B.T @ x1
  kw = dict(cg_iters=10, cg_damping=0.0, return_info=True)
  for unroll in (False, True):
    g, info = arch_grad("implicit_cg", q.train_loss, q.val_loss,
                        q.to_params(q.w), q.to_alphas(q.a), None, None,
                        unroll_solver=unroll, **kw)
    np.testing.assert_allclose(q.vec_a(g), expected, rtol=0, atol=1e-12)
    assert bool(info["negative_curvature"]) and not bool(info["diverged"])
    assert int(info["iterations"]) == 1
    np.testing.assert_allclose(info["residual_norm"], np.linalg.norm(r1),
                               rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_implicit_weight_decay_matches_regularised_closed_form():
  """Coupled decay: the weights minimise L_train + wd/2 ||w||^2."""
  q = Quadratic(seed=3)
  wd = 0.5
  a_reg = q.A + wd * np.eye(5)
  w_star = np.linalg.solve(a_reg, q.B @ q.a)
  expected = q.D @ q.a + q.B.T @ np.linalg.solve(a_reg, w_star - q.c)
  # Independently: autodiff through w*(a) = (A + wd I)^{-1} B a.
  outer = lambda a: q.val_loss(q.to_params(jnp.linalg.solve(a_reg, q.B @ a)),
                               q.to_alphas(a), None)
  np.testing.assert_allclose(jax.grad(outer)(jnp.asarray(q.a)), expected,
                             rtol=0, atol=1e-12)
  # H + wd I has eigenvalues in [1.5, 3.5]: lr = 0.4 contracts by 0.4 a term.
  for method, kw in [("implicit_cg", dict(cg_iters=10, cg_damping=0.0)),
                     ("implicit_neumann", dict(neumann_terms=60, neumann_lr=0.4))]:
    got = q.grad(method, w_star, weight_decay=wd, **kw)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10, err_msg=method)
    # Without the decay term the answer is visibly different.
    assert np.abs(q.grad(method, w_star, **kw) - expected).max() > 1e-2, method


@pytest.mark.usefixtures("x64")
def test_neumann_divergence_is_flagged_and_truncated():
  """lr = 0.9 > 2 / lambda_max = 2/3: the series grows by up to 1.7 a term."""
  q = Quadratic(seed=1)
  lr, terms = 0.9, 40
  b = q.w - q.c
  step = np.eye(5) - lr * q.A
  p = [b]
  while np.linalg.norm(p[-1]) <= 2 * np.linalg.norm(b):
    p.append(step @ p[-1])
  norms = [np.linalg.norm(t) for t in p[:-1]]
  last = max(k for k in range(len(norms)) if k == 0 or norms[k] <= norms[k - 1])
  assert 0 < last < len(norms) - 1 < terms  # shrinks, then grows, then trips
  expected = q.D @ q.a + q.B.T @ (lr * np.sum(p[:last + 1], axis=0))

  @jax.jit
  def solve(w):
    return arch_grad("implicit_neumann", q.train_loss, q.val_loss,
                     q.to_params(w), q.to_alphas(q.a), None, None,
                     neumann_terms=terms, neumann_lr=lr, return_info=True)

  g, info = solve(q.w)
  np.testing.assert_allclose(q.vec_a(g), expected, rtol=0, atol=1e-12)
  assert bool(info["diverged"]) and not bool(info["negative_curvature"])
  assert int(info["iterations"]) == last
  # A contractive step is not flagged, and converges.
  g, info = arch_grad("implicit_neumann", q.train_loss, q.val_loss,
                      q.to_params(q.w), q.to_alphas(q.a), None, None,
                      neumann_terms=terms, neumann_lr=0.4, return_info=True)
  assert not bool(info["diverged"]) and int(info["iterations"]) == terms
  # Residual b - H x = (I - lr H)^{terms+1} b, and ||I - 0.4 H|| = 0.6.
  assert float(info["residual_norm"]) <= 0.6**(terms + 1) * np.linalg.norm(b)
  # Methods without a solve report an empty one.
  _, info = arch_grad("first_order", q.train_loss, q.val_loss, q.to_params(q.w),
                      q.to_alphas(q.a), None, None, return_info=True)
  assert int(info["iterations"]) == 0 and not bool(info["diverged"])


def test_solver_settings_are_validated():
  q = Quadratic()
  call = lambda method, **kw: jax.eval_shape(lambda: arch_grad(
      method, q.train_loss, q.val_loss, q.to_params(q.w), q.to_alphas(q.a),
      None, None, **kw))
  with pytest.raises(ValueError, match="neumann_lr must be > 0"):
    call("implicit_neumann", neumann_lr=0.0)
  with pytest.raises(ValueError, match="cg_damping must be >= 0"):
    call("implicit_cg", cg_damping=-1e-3)
  with pytest.raises(ValueError, match="weight_decay must be >= 0"):
    call("implicit_neumann", xi=0.1, weight_decay=-3e-4)
  call("implicit_cg", weight_decay=3e-4)  # a valid call passes


@pytest.mark.usefixtures("x64")
def test_unrolled_matches_closed_form_on_quadratic():
  q = Quadratic()
  xi = 0.3
  w1 = q.w - xi * (q.A @ q.w - q.B @ q.a)
  expected = q.D @ q.a + xi * q.B.T @ (w1 - q.c)
  unrolled = q.grad("unrolled", q.w, xi=xi)
  exact = q.grad("exact_hvp", q.w, xi=xi)
  np.testing.assert_allclose(unrolled, expected, rtol=0, atol=1e-10)
  np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-10)
  np.testing.assert_allclose(unrolled, exact, rtol=0, atol=1e-13)
  np.testing.assert_allclose(q.grad("first_order", q.w, xi=xi), q.D @ q.a,
                             rtol=0, atol=1e-13)
  # The train loss is linear in w inside grad_alpha, so eq. 8 is exact too.
  np.testing.assert_allclose(q.grad("finite_difference", q.w, xi=xi),
                             expected, rtol=0, atol=1e-9)
  # virtual_step itself.
  vs = hypergrad.virtual_step(q.train_loss, q.to_params(q.w),
                              q.to_alphas(q.a), None, xi=xi)
  np.testing.assert_allclose(q.vec_w(vs), w1, atol=1e-13)


# ---------------------------------------------------------------------------
# DARTS Figure 2: L_val = a w - 2a + 1, L_train = w^2 - 2aw + a^2.


def _toy_val(w, a, batch):
  del batch
  return a * w - 2 * a + 1


def _toy_train(w, a, batch):
  del batch
  return w**2 - 2 * a * w + a**2


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("w,a,xi", [(-2.0, 2.0, 0.1), (-2.0, 2.0, 0.7),
                                    (0.5, -1.3, 0.25)])
def test_darts_toy_problem(w, a, xi):
  # w' = w - xi (2w - 2a) = (1 - 2 xi) w + 2 xi a, so
  # d/da [a w' - 2a + 1] = w' + a * 2 xi - 2 = (1 - 2 xi) w + 4 xi a - 2.
  expected = (1 - 2 * xi) * w + 4 * xi * a - 2
  args = (_toy_train, _toy_val, jnp.asarray(w), jnp.asarray(a), None, None)
  for method in ("unrolled", "exact_hvp", "finite_difference"):
    got = arch_grad(method, *args, xi=xi)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10, err_msg=method)
  np.testing.assert_allclose(arch_grad("first_order", *args), w - 2, atol=1e-14)


# ---------------------------------------------------------------------------
# A small nonlinear search problem: a 2-layer MLP whose hidden activation is a
# softmax(alpha)-weighted mix of candidates and whose output mixes two paths.


def _mlp_loss(params, alphas, batch):
  # Few distinct ops on purpose: XLA compile time dominates these tests.
  x, y = batch
  pre = x @ params["w1"] + params["b1"]
  act = jax.nn.softmax(alphas["act"])
  h = act[0] * jnp.tanh(pre) + act[1] * pre + act[2] * 0.5 * pre * pre
  out = jax.nn.softmax(alphas["out"])
  pred = out[0] * (h @ params["w2"]) + out[1] * (x @ params["skip"])
  return jnp.mean((pred - y)**2)


def _mlp_setup(dtype=np.float64, seed=0, batch=8):
  rng = np.random.default_rng(seed)
  f = lambda *s, scale=0.7: jnp.asarray(rng.normal(size=s) * scale, dtype)
  params = {"w1": f(4, 6), "b1": f(6, scale=0.2), "w2": f(6, 3),
            "skip": f(4, 3, scale=0.4)}
  alphas = {"act": f(3, scale=0.5), "out": f(2, scale=0.5)}
  make = lambda: (f(batch, 4, scale=1.0), f(batch, 3, scale=1.0))
  return params, alphas, make(), make()


def _central_fd_unrolled(params, alphas, tb, vb, xi, h=1e-5):
  flat, unravel = ravel_pytree(alphas)

  @jax.jit
  def f(a_flat):
    a = unravel(a_flat)
    w1 = jax.tree.map(lambda w, g: w - xi * g, params,
                      jax.grad(_mlp_loss)(params, a, tb))
    return _mlp_loss(w1, a, vb)

  out = np.zeros(flat.shape)
  for i in range(flat.size):
    e = np.zeros(flat.shape)
    e[i] = h
    out[i] = (float(f(flat + e)) - float(f(flat - e))) / (2 * h)
  return out


@pytest.mark.usefixtures("x64")
def test_mlp_unrolled_vs_finite_differences_and_exact_hvp():
  params, alphas, tb, vb = _mlp_setup()
  xi = 0.5
  kw = dict(xi=xi)
  unrolled = arch_grad("unrolled", _mlp_loss, _mlp_loss, params, alphas, tb, vb,
                       **kw)
  exact = arch_grad("exact_hvp", _mlp_loss, _mlp_loss, params, alphas, tb, vb,
                    **kw)
  first = arch_grad("first_order", _mlp_loss, _mlp_loss, params, alphas, tb, vb)
  fd = _central_fd_unrolled(params, alphas, tb, vb, xi)
  assert _rel_err(unrolled, fd) < 1e-7
  assert _rel_err(unrolled, exact) < 1e-12
  # The second-order term matters here, so the comparisons can fail.
  assert _rel_err(first, fd) > 1e-2
  # xi = 0 reduces the unrolled gradient to the first-order one.
  zero = arch_grad("unrolled", _mlp_loss, _mlp_loss, params, alphas, tb, vb,
                   xi=0.0)
  assert _rel_err(zero, first) < 1e-14


@pytest.mark.usefixtures("x64")
def test_finite_difference_converges_quadratically():
  params, alphas, tb, vb = _mlp_setup(seed=3)
  args = (_mlp_loss, _mlp_loss, params, alphas, tb, vb)
  exact = _flat(arch_grad("exact_hvp", *args, xi=1.0))
  errs = [np.linalg.norm(_flat(arch_grad("finite_difference", *args, xi=1.0,
                                         fd_eps=eps)) - exact)
          for eps in (1e-2, 1e-3, 1e-4)]
  assert errs[0] > 1e-9, errs  # the truncation error is visible at all
  assert errs[0] / errs[1] > 30 and errs[1] / errs[2] > 30, errs


@pytest.mark.usefixtures("x64")
def test_single_level_and_joint_grad():
  params, alphas, tb, vb = _mlp_setup(seed=4)
  g_p, g_a = hypergrad.joint_grad(_mlp_loss, params, alphas, tb)
  ref_p = jax.grad(_mlp_loss, argnums=0)(params, alphas, tb)
  ref_a = jax.grad(_mlp_loss, argnums=1)(params, alphas, tb)
  assert _rel_err(g_p, ref_p) < 1e-14 and _rel_err(g_a, ref_a) < 1e-14
  single = arch_grad("single_level", _mlp_loss, _mlp_loss, params, alphas, tb, vb)
  assert _rel_err(single, ref_a) < 1e-14
  # It must use the train batch, not the validation batch.
  assert _rel_err(single, jax.grad(_mlp_loss, 1)(params, alphas, vb)) > 1e-3


@pytest.mark.usefixtures("x64")
def test_has_aux_returns_val_aux_at_evaluation_point():
  params, alphas, tb, vb = _mlp_setup(seed=5)
  with_aux = lambda p, a, b: (_mlp_loss(p, a, b), {"w1": p["w1"]})
  w1 = hypergrad.virtual_step(_mlp_loss, params, alphas, tb, xi=0.3)
  for method, point in [("first_order", params), ("unrolled", w1),
                        ("exact_hvp", w1), ("finite_difference", w1),
                        ("implicit_cg", params), ("single_level", params)]:
    g, aux = arch_grad(method, with_aux, with_aux, params, alphas, tb, vb,
                       xi=0.3, has_aux=True)
    plain = arch_grad(method, _mlp_loss, _mlp_loss, params, alphas, tb, vb,
                      xi=0.3)
    assert _rel_err(g, plain) < 1e-14, method
    np.testing.assert_allclose(aux["w1"], point["w1"], atol=1e-14,
                               err_msg=method)
  (g_p, _), aux = hypergrad.joint_grad(with_aux, params, alphas, tb,
                                       has_aux=True)
  assert jax.tree.structure(g_p) == jax.tree.structure(params)
  np.testing.assert_allclose(aux["w1"], params["w1"])


# ---------------------------------------------------------------------------
# The real optax step as the virtual step.


def _one_real_step(optimizer, params, alphas, batch):
  state = optimizer.init(params)
  g = jax.grad(_mlp_loss)(params, alphas, batch)
  updates, state = optimizer.update(g, state, params)
  return optax.apply_updates(params, updates), state


@pytest.mark.usefixtures("x64")
def test_unrolled_through_optax_momentum_and_weight_decay():
  params0, alphas, tb, vb = _mlp_setup(seed=6)
  lr, m, wd = 0.2, 0.9, 3e-2
  optimizer = optax.chain(optax.add_decayed_weights(wd),
                          optax.sgd(lr, momentum=m))
  params, state = _one_real_step(optimizer, params0, alphas, vb)
  buf = optax.tree_utils.tree_get(state, "trace")
  assert _flat(buf).std() > 1e-3  # a non-trivial momentum buffer

  def hand_unrolled_objective(a):
    g = jax.grad(_mlp_loss)(params, a, tb)
    w1 = jax.tree.map(lambda w, b, gi: w - lr * (m * b + gi + wd * w),
                      params, buf, g)
    return _mlp_loss(w1, a, vb)

  reference = jax.grad(hand_unrolled_objective)(alphas)
  args = (_mlp_loss, _mlp_loss, params, alphas, tb, vb)
  kw = dict(optimizer=optimizer, opt_state=state)
  unrolled = arch_grad("unrolled", *args, **kw)
  exact = arch_grad("exact_hvp", *args, xi=lr, **kw)
  assert _rel_err(unrolled, reference) < 1e-12
  assert _rel_err(exact, reference) < 1e-12
  # The momentum/decay terms change w'; with an optimizer xi is unused:
  # exact_hvp pulls v back through the update itself (-lr v here).
  assert _rel_err(arch_grad("unrolled", *args, xi=lr), reference) > 1e-4
  assert _rel_err(arch_grad("exact_hvp", *args, xi=2 * lr, **kw), reference) < 1e-12
  # Nesterov: the update is -lr (1 + m) g + (terms without g), found without
  # being told; and Adam, nonlinear in g, still agrees with unrolled.
  for opt in (optax.sgd(lr, momentum=m, nesterov=True), optax.adam(1e-2)):
    params_n, state_n = _one_real_step(opt, params0, alphas, vb)
    args_n = (_mlp_loss, _mlp_loss, params_n, alphas, tb, vb)
    kw_n = dict(optimizer=opt, opt_state=state_n)
    unrolled_n = arch_grad("unrolled", *args_n, **kw_n)
    assert _rel_err(arch_grad("exact_hvp", *args_n, **kw_n), unrolled_n) < 1e-12
    assert _rel_err(arch_grad("finite_difference", *args_n, fd_eps=1e-6, **kw_n),
                    unrolled_n) < 1e-6


# ---------------------------------------------------------------------------
# Data parallelism: split batch over devices == full batch on one device.


def _n_devices():
  n = min(4, jax.local_device_count())
  if n < 2:
    pytest.skip("needs >= 2 (fake) devices; see tests/conftest.py")
  return n


def _shard(batch, n):
  return jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)


def _parallel_cases(optimizer, state):
  """(name, method, options) covering the code paths that touch axis_name.

  implicit_neumann is left out: it differs from implicit_cg only in the solver,
  plain tree arithmetic on already device-averaged Hessian-vector products.
  """
  optax_kw = dict(optimizer=optimizer, opt_state=state)
  return [
      ("first_order", "first_order", {}),
      ("unrolled_sgd", "unrolled", dict(xi=0.4)),
      ("unrolled_optax", "unrolled", optax_kw),
      ("exact_hvp_optax", "exact_hvp", dict(xi=0.3, **optax_kw)),
      ("finite_difference", "finite_difference", dict(xi=0.4)),
      ("single_level", "single_level", {}),
      ("implicit_cg", "implicit_cg", dict(cg_iters=3, cg_damping=0.1)),
  ]


def _all_cases(cases, axis_name=None):
  """One function computing every case, so each wrapper compiles only once."""

  def run(params, alphas, tb, vb):
    out = {name: arch_grad(method, _mlp_loss, _mlp_loss, params, alphas, tb, vb,
                           axis_name=axis_name, **kw)
           for name, method, kw in cases}
    out["joint_grad"] = hypergrad.joint_grad(_mlp_loss, params, alphas, tb,
                                             axis_name=axis_name)
    return out

  return run


@pytest.mark.usefixtures("x64")
def test_data_parallel_split_batch_equals_full_batch():
  n = _n_devices()
  params, alphas, tb, vb = _mlp_setup(seed=7, batch=8)
  optimizer = optax.chain(optax.add_decayed_weights(1e-2),
                          optax.sgd(0.3, momentum=0.9))
  _, state = _one_real_step(optimizer, params, alphas, vb)
  cases = _parallel_cases(optimizer, state)
  full = _all_cases(cases)(params, alphas, tb, vb)

  per_device = jax.pmap(_all_cases(cases, axis_name="d"), axis_name="d",
                        in_axes=(None, None, 0, 0))(
                            params, alphas, _shard(tb, n), _shard(vb, n))
  assert set(per_device) == set(full)
  for name in full:
    for i in range(n):
      got = jax.tree.map(lambda x: x[i], per_device[name])
      assert _rel_err(got, full[name]) < 1e-12, ("pmap", name, i)

  # shard_map's default check_vma=True would psum gradients of replicated
  # inputs by itself; the result must still be the plain device mean.
  # (A subset: the paths that differentiate, linearise or loop over pmeans.)
  subset = [c for c in cases if c[0] in ("unrolled_optax", "exact_hvp_optax",
                                         "finite_difference", "implicit_cg")]
  mesh = Mesh(np.array(jax.devices()[:n]), ("d",))
  sharded = jax.jit(jax.shard_map(_all_cases(subset, axis_name="d"), mesh=mesh,
                                  in_specs=(P(), P(), P("d"), P("d")),
                                  out_specs=P()))(params, alphas, tb, vb)
  assert len(sharded) == 5
  for name in sharded:
    assert _rel_err(sharded[name], full[name]) < 1e-12, ("shard_map", name)

  # A named vmap axis (simulated devices) behaves the same.
  vmapped = jax.jit(jax.vmap(functools.partial(arch_grad, "unrolled", _mlp_loss,
                                               _mlp_loss, xi=0.4, axis_name="d"),
                             in_axes=(None, None, 0, 0), axis_name="d"))(
                                 params, alphas, _shard(tb, n), _shard(vb, n))
  assert _rel_err(jax.tree.map(lambda x: x[-1], vmapped),
                  full["unrolled_sgd"]) < 1e-12

  # Without the pmean each device steps with its own gradient: different.
  local = jax.pmap(functools.partial(arch_grad, "unrolled", _mlp_loss, _mlp_loss,
                                     xi=0.4),
                   in_axes=(None, None, 0, 0))(params, alphas, _shard(tb, n),
                                               _shard(vb, n))
  assert _rel_err(jax.tree.map(lambda x: x.mean(0), local),
                  full["unrolled_sgd"]) > 1e-6


# ---------------------------------------------------------------------------
# Input validation.


def test_bad_inputs_raise_clear_errors():
  params, alphas, tb, vb = _mlp_setup(np.float32)
  # Every check fires at trace time, so abstract evaluation is enough (and fast).
  call = lambda *a, **k: jax.eval_shape(lambda: arch_grad(*a, **k))
  args = (_mlp_loss, _mlp_loss, params, alphas, tb, vb)
  with pytest.raises(ValueError, match=r"Unknown hypergradient method "
                     r"'second_order'; known methods: first_order, "
                     r".*implicit_cg"):
    call("second_order", *args, xi=0.1)

  def per_example(p, a, batch):
    x, y = batch
    return jnp.mean(_mlp_loss(p, a, (x, y)) + 0 * x, axis=1)

  with pytest.raises(ValueError, match=r"train_loss must return a scalar, got "
                     r"shape \(8,\); reduce with jnp.mean"):
    call("unrolled", per_example, _mlp_loss, *args[2:], xi=0.1)
  with pytest.raises(ValueError, match=r"val_loss must return a scalar"):
    call("first_order", _mlp_loss, per_example, *args[2:])

  optimizer = optax.sgd(0.1, momentum=0.9)
  wrong = {k: v for k, v in params.items() if k != "skip"}
  with pytest.raises(ValueError, match="opt_state does not fit params"):
    call("unrolled", *args, optimizer=optimizer, opt_state=optimizer.init(wrong))
  wrong_shape = dict(params, b1=jnp.zeros((1,), jnp.float32))
  with pytest.raises(ValueError, match="opt_state does not fit params"):
    call("exact_hvp", *args, xi=0.1, optimizer=optimizer,
         opt_state=optimizer.init(wrong_shape))
  with pytest.raises(ValueError, match="pass optimizer and opt_state together"):
    call("unrolled", *args, optimizer=optimizer)

  for method in ("unrolled", "exact_hvp", "finite_difference"):
    with pytest.raises(ValueError, match=f"{method} needs xi"):
      call(method, *args)
  with pytest.raises(ValueError, match="needs neumann_lr"):
    call("implicit_neumann", *args)
  with pytest.raises(ValueError, match="fd_eps must be > 0"):
    call("finite_difference", *args, xi=0.1, fd_eps=0.0)

  int_alphas = dict(alphas, act=jnp.array([1, 2, 3]))
  with pytest.raises(TypeError, match=r"alphas\['act'\] has dtype int"):
    call("first_order", _mlp_loss, _mlp_loss, params, int_alphas, tb, vb)
  with pytest.raises(TypeError, match="pass has_aux=True"):
    call("first_order", _mlp_loss, lambda p, a, b: (_mlp_loss(p, a, b), {}),
         params, alphas, tb, vb)
  with pytest.raises(TypeError, match=r"must return \(scalar, aux\)"):
    call("first_order", *args, has_aux=True)
  # The valid call passes the same checks.
  call("exact_hvp", *args, xi=0.1, optimizer=optimizer,
       opt_state=optimizer.init(params))


# ---------------------------------------------------------------------------
# jit and float32.


@pytest.mark.usefixtures("x64")
def test_jit_matches_eager_and_traces_once():
  params, alphas, tb, vb = _mlp_setup(seed=9)
  traces = []

  def counting_loss(p, a, b):
    traces.append(None)  # runs only while tracing
    return _mlp_loss(p, a, b)

  jitted = jax.jit(functools.partial(arch_grad, "exact_hvp", counting_loss,
                                     counting_loss, xi=0.1))
  eager = arch_grad("exact_hvp", _mlp_loss, _mlp_loss, params, alphas, tb, vb,
                    xi=0.1)
  assert _rel_err(jitted(params, alphas, tb, vb), eager) < 1e-13
  n_traced = len(traces)
  params2 = jax.tree.map(lambda x: x * 1.1, params)
  jitted(params2, alphas, tb, vb)
  assert len(traces) == n_traced  # new values, same compiled function
  # A traced xi works as well.
  traced_xi = jax.jit(lambda xi: arch_grad("unrolled", _mlp_loss, _mlp_loss,
                                           params, alphas, tb, vb, xi=xi))
  assert _rel_err(traced_xi(0.1), eager) < 1e-12


def test_float32_all_methods():
  params, alphas, tb, vb = _mlp_setup(np.float32, seed=10)
  kw = dict(xi=0.1, neumann_terms=5, cg_iters=4, cg_damping=0.1)
  # One jit over all methods: a single compile, and jit-ability of each.
  got = jax.jit(lambda *args: {
      m: arch_grad(m, _mlp_loss, _mlp_loss, *args, **kw)
      for m in hypergrad.METHODS})(params, alphas, tb, vb)
  for method, g in got.items():
    chex.assert_trees_all_equal_shapes_and_dtypes(g, alphas)
    assert np.all(np.isfinite(_flat(g))), method
  assert _rel_err(got["unrolled"], got["exact_hvp"]) < 1e-5
  assert _rel_err(got["finite_difference"], got["exact_hvp"]) < 1e-3
  with jax.enable_x64(True):
    p64, a64, tb64, vb64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                                        (params, alphas, tb, vb))
    ref = arch_grad("exact_hvp", _mlp_loss, _mlp_loss, p64, a64, tb64, vb64,
                    xi=0.1)
    assert jax.tree.leaves(ref)[0].dtype == jnp.float64
  assert _rel_err(got["exact_hvp"], ref) < 1e-5
