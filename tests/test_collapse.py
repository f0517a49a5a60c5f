"""Collapse diagnostics: power iteration on exact HVPs against explicit Hessians; DARTS-ES."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdarts import collapse
from test_toy_space import ToyCellSpace


def test_power_iteration_on_a_quadratic_with_known_spectrum():
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
  eig = np.array([-0.5, 0.1, 0.3, 1.0, 2.0, 4.0])  # closed form: f = x^T A x / 2, H = A
  a = jnp.asarray(q @ np.diag(eig) @ q.T, jnp.float32)
  fn = lambda p: 0.5 * p["x"] @ (a @ p["x"]) + jnp.sum(p["y"] ** 2) * 0.0
  alphas = {"x": jnp.ones(6), "y": jnp.zeros(())}
  lam, n = collapse.dominant_eigenvalue(fn, alphas, jax.random.PRNGKey(0), iters=500,
                                        tol=1e-7)
  assert lam == pytest.approx(4.0, rel=1e-4) and n < 500
  np.testing.assert_allclose(collapse.hessian_eigenvalues(fn, alphas),
                             np.sort(np.append(eig, 0.0)), atol=1e-5)  # y: a zero


def test_dominant_eigenvalue_equals_the_explicit_alpha_hessian_on_the_toy_space():
  space = ToyCellSpace((4, 4, 1), num_classes=3, hidden=6, dropout=0.0)
  k = jax.random.split(jax.random.PRNGKey(3), 4)
  batch = {"image": jax.random.normal(k[0], (8, 4, 4, 1)),
           "label": jax.random.randint(k[1], (8,), 0, 3)}
  params = space.init(k[2], batch)
  alphas = {"cell": jax.random.normal(k[3], (3, 4))}  # away from uniform: curvature
  carry = space.init_carry(8)
  fn = lambda a: space.loss(params, a, batch, jax.random.PRNGKey(0), carry)[0]
  spectrum = collapse.hessian_eigenvalues(fn, alphas)
  dominant = spectrum[np.argmax(np.abs(spectrum))]
  second = np.sort(np.abs(spectrum))[-2]
  assert abs(dominant) > 1.2 * second > 0  # a gap, so power iteration converges
  lam, _ = collapse.dominant_eigenvalue(fn, alphas, jax.random.PRNGKey(1), iters=1000,
                                        tol=1e-8)
  assert lam == pytest.approx(dominant, rel=1e-3)


def test_darts_es_stops_when_the_eigenvalue_rises_and_keeps_epoch_i_minus_k():
  es = collapse.EarlyStop(window=2, threshold=0.75)
  # Windows of 2: (1.0+1.0)/(1.1+1.0) = 0.95 >= 0.75, no stop.
  assert [es.add(v) for v in (1.0, 1.0, 1.1, 1.0)] == [False] * 4
  # (1.1+1.0)/(1.0+2.0) = 0.70 < 0.75: stop at epoch i=4 and keep epoch i-k=2.
  assert es.add(2.0) is True
  assert es.keep_index == 2
  calm = collapse.EarlyStop(window=2, threshold=0.75)
  assert not any(calm.add(v) for v in (3.0, 2.0, 2.0, 2.5, 2.5, 2.6))  # falls, then flat


def test_darts_es_ends_the_search_keeps_the_earlier_genotype_and_resumes(tmp_path,
                                                                        monkeypatch):
  # What a stop does (the rule itself is tested above), in a run interrupted
  # before it: DARTS-ES decides on the eigenvalues of all earlier epochs and
  # keeps the alphas of an earlier one, so the resumed run must have both.
  import json
  import ml_collections
  import helpers
  from jdarts import search_loop
  # Stop at the third measurement (whatever the values): a resumed run that
  # forgot the first two would go on to the end.
  monkeypatch.setattr(collapse.EarlyStop, "add",
                      lambda self, v: self.values.append(float(v)) or len(self.values) == 3)

  def run(workdir, max_steps):
    cfg = helpers.tiny_search_config(str(tmp_path / "cache"), epochs=5, max_steps=max_steps)
    cfg.space = "toy_mlp_cell"
    cfg.model = ml_collections.ConfigDict(dict(hidden=8, dropout=0.0))
    cfg.data.augment, cfg.data.train_portion = False, 0.01  # one step per epoch
    cfg.report = False
    cfg.arch.learning_rate = 0.3  # the alphas move every step: the kept ones differ from the last
    cfg.collapse.update(every_epochs=1, early_stop=True, window=1)
    return search_loop.run(cfg, str(workdir))

  workdir = tmp_path / "run"
  first = run(workdir, 2)
  assert first["steps"] == 2 and "early_stopped" not in first
  at_step_2 = {n: json.loads((workdir / n).read_text()) for n in ("genotype.json", "alphas.json")}
  resumed = run(workdir, 0)  # from the checkpoint of step 2
  # Uninterrupted, the rule stops at the third measurement (step 3) and keeps the
  # one before (window 1): the alphas the first run ended with.
  assert resumed["early_stopped"] == {"step": 3, "kept_step": 2}
  assert resumed["steps"] == 3 and resumed["genotype"] == at_step_2["genotype.json"]
  assert json.loads((workdir / "alphas.json").read_text()) == at_step_2["alphas.json"]
  hist = [json.loads(l) for l in (workdir / "alpha_history.jsonl").read_text().splitlines()]
  assert [h["step"] for h in hist] == [1, 2, 3]
  assert hist[1]["genotype"] == at_step_2["genotype.json"]
  # The kept alphas are step 2's, not the last step's (the alphas move every step).
  np.testing.assert_allclose(at_step_2["alphas.json"]["cell"], hist[1]["alphas"]["cell"])
  assert not np.allclose(at_step_2["alphas.json"]["cell"], hist[2]["alphas"]["cell"])
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "collapse"] == [1, 2, 3]
