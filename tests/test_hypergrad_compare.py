"""Tests for jdarts.hypergrad_compare and the `jdarts hypergrad` command.

References: the closed-form hypergradients of a quadratic bilevel problem (all
exact estimators agree, first order misses a known term), the eps^2 slope of
central differences on a smooth problem in float64, and the files the command
promises on a tiny search config.
"""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdarts import cli, config_lib, hypergrad, hypergrad_compare as hc
import helpers


class Quadratic:
  """L_train = 0.5 w'Aw - w'Ba,  L_val = 0.5||w - c||^2 + 0.5 a'Da (pytree leaves split)."""

  def __init__(self, n=5, m=3, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    self.A = q @ np.diag(np.linspace(1.0, 3.0, n)) @ q.T
    self.B = rng.normal(size=(n, m))
    d = rng.normal(size=(m, m))
    self.D = d @ d.T + np.eye(m)
    self.c, self.a, self.w = rng.normal(size=n), rng.normal(size=m), rng.normal(size=n)
    self.params = {"head": jnp.asarray(self.w[:2]), "tail": jnp.asarray(self.w[2:])}
    self.alphas = (jnp.asarray(self.a[:1]), {"rest": jnp.asarray(self.a[1:])})

  def train_loss(self, params, alphas, batch):
    del batch
    w = jnp.concatenate([params["head"], params["tail"]])
    a = jnp.concatenate([alphas[0], alphas[1]["rest"]])
    return 0.5 * w @ self.A @ w - w @ self.B @ a

  def val_loss(self, params, alphas, batch):
    del batch
    w = jnp.concatenate([params["head"], params["tail"]])
    a = jnp.concatenate([alphas[0], alphas[1]["rest"]])
    return 0.5 * jnp.sum((w - self.c)**2) + 0.5 * a @ self.D @ a

  def hypergrads(self, xi):
    """(first order, unrolled) in closed form: D a and D a + xi B'(w' - c)."""
    w1 = self.w - xi * (self.A @ self.w - self.B @ self.a)
    first = self.D @ self.a
    return first, first + xi * self.B.T @ (w1 - self.c)


def _smooth_problem(seed=3):
  """A tanh MLP whose activation and output mix candidates by softmax(alpha)."""
  rng = np.random.default_rng(seed)
  f = lambda *s, scale=0.7: jnp.asarray(rng.normal(size=s) * scale)
  params = {"w1": f(4, 6), "b1": f(6, scale=0.2), "w2": f(6, 3), "skip": f(4, 3, scale=0.4)}
  alphas = {"act": f(3, scale=0.5), "out": f(2, scale=0.5)}

  def loss(p, a, batch):
    x, y = batch
    pre = x @ p["w1"] + p["b1"]
    act = jax.nn.softmax(a["act"])
    h = act[0] * jnp.tanh(pre) + act[1] * pre + act[2] * jnp.sin(pre)
    out = jax.nn.softmax(a["out"])
    return jnp.mean((out[0] * (h @ p["w2"]) + out[1] * (x @ p["skip"]) - y)**2)

  batch = lambda: (f(8, 4, scale=1.0), f(8, 3, scale=1.0))
  return loss, params, alphas, batch(), batch()


@pytest.mark.usefixtures("x64")
def test_compare_on_a_quadratic_matches_closed_forms():
  """Exact estimators agree to round-off; first order misses exactly xi B'(w' - c)."""
  q, xi = Quadratic(), 0.1
  first, unrolled = q.hypergrads(xi)
  rows = hc.compare(q.train_loss, q.val_loss, q.params, q.alphas, None, None,
                    methods=("first_order", "exact_hvp", "finite_difference", "unrolled"),
                    xi=xi, repeats=2)
  by = {r["method"]: r for r in rows}
  assert [r["method"] for r in rows] == ["first_order", "exact_hvp", "finite_difference",
                                         "unrolled"]
  assert by["unrolled"]["rel_err"] == 0.0
  assert by["unrolled"]["grad_norm"] == pytest.approx(np.linalg.norm(unrolled), rel=1e-12)
  for m in ("exact_hvp", "finite_difference"):  # eq. 8 is exact for a quadratic L_train
    assert by[m]["rel_err"] < 1e-12, by[m]
    assert by[m]["cos_sim"] == pytest.approx(1.0, abs=1e-12)
  want_rel = np.linalg.norm(first - unrolled) / np.linalg.norm(unrolled)
  want_cos = first @ unrolled / (np.linalg.norm(first) * np.linalg.norm(unrolled))
  assert by["first_order"]["rel_err"] == pytest.approx(want_rel, rel=1e-10)
  assert by["first_order"]["cos_sim"] == pytest.approx(want_cos, rel=1e-10)
  assert want_rel > 1e-3  # the missing term is visible, so the check can fail
  for r in rows:  # the cost fields are filled in on CPU
    assert r["ms_per_call"] > 0 and r["min_ms"] <= r["ms_per_call"] and r["compile_s"] > 0
    assert r["peak_bytes"] >= r["argument_bytes"] > 0 and r["backend"] == "cpu"
  table = hc.format_table(rows).splitlines()
  assert table[0].split() == ["method", "cos-sim", "rel-err", "ms/call", "compile", "s",
                              "peak", "MiB"]
  assert len(table) == 2 + len(rows) and len({len(line) for line in table}) == 1


@pytest.mark.usefixtures("x64")
def test_compare_with_an_optax_step_and_another_reference():
  """Through optax momentum SGD, unrolled equals exact_hvp with xi = lr; the
  reference is computed even when it is not among the methods."""
  q = Quadratic(seed=1)
  opt = optax.sgd(0.05, momentum=0.9)
  # A state with non-zero momentum, so the real step is not plain SGD.
  _, state = opt.update(jax.tree.map(jnp.ones_like, q.params), opt.init(q.params))
  rows = hc.compare(q.train_loss, q.val_loss, q.params, q.alphas, None, None,
                    methods="exact_hvp,first_order", xi=0.05, w_opt=opt, w_opt_state=state,
                    repeats=1)
  assert rows[0]["method"] == "exact_hvp" and rows[0]["rel_err"] < 1e-12
  assert rows[1]["rel_err"] > 1e-3
  rows = hc.compare(q.train_loss, q.val_loss, q.params, q.alphas, None, None,
                    methods=("unrolled",), xi=0.1, reference=None, repeats=1)
  assert np.isnan(rows[0]["rel_err"]) and np.isnan(rows[0]["cos_sim"])


@pytest.mark.usefixtures("x64")
def test_fd_eps_sweep_shows_eps_squared_then_round_off():
  """Smooth loss in float64: error ~ eps^2 (slope 2 on log-log) down to a
  round-off floor near 1e-9, then growing again like 1/eps."""
  loss, params, alphas, tb, vb = _smooth_problem()
  # float32 inputs: float64=True casts them (x64 is on).
  p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  rows = hc.fd_eps_sweep(loss, loss, p32, alphas, tb, vb, xi=1.0)
  assert [r["eps"] for r in rows] == pytest.approx(list(np.logspace(0, -10, 21)))
  assert {r["dtype"] for r in rows} == {"float64"}
  slope = hc.loglog_slope(rows, 1e-4, 1e-1)
  assert 1.9 < slope < 2.1, [(r["eps"], r["abs_err"]) for r in rows]
  s = hc.summarize_sweep(rows)
  assert 1.8 < s["truncation_slope"] < 2.2, s
  assert s["fit_eps_min"] <= 1e-4 and s["fit_eps_max"] >= 1e-1, s
  assert s["floor_rel_err"] < 1e-8 and 1e-8 <= s["eps_at_floor"] <= 1e-4, s
  assert s["roundoff_slope"] < -0.5, s
  # The unrolled reference gives the same picture.
  unrolled = hc.fd_eps_sweep(loss, loss, params, alphas, tb, vb, xi=1.0, eps=(1e-2, 1e-3),
                             reference="unrolled")
  assert unrolled[0]["abs_err"] / unrolled[1]["abs_err"] == pytest.approx(100, rel=0.05)


def test_bad_inputs_raise_clear_errors():
  """Unknown or repeated methods, a non-scalar loss, an optimiser state of other
  params and gradients of different structure are named, before anything runs."""
  q = Quadratic()
  p = jax.tree.map(lambda x: x.astype(jnp.float32), q.params)
  a = jax.tree.map(lambda x: x.astype(jnp.float32), q.alphas)
  args = (q.train_loss, q.val_loss, p, a, None, None)
  with pytest.raises(ValueError, match=r"Unknown hypergradient method 'second_order'; "
                     r"known methods: first_order, .*implicit_cg"):
    hc.compare(*args, methods=("exact_hvp", "second_order"), xi=0.1)
  with pytest.raises(ValueError, match="Unknown hypergradient method 'exact'"):
    hc.compare(*args, methods=("first_order",), reference="exact", xi=0.1)
  with pytest.raises(ValueError, match="lists a method twice"):
    hc.compare(*args, methods=("first_order", "first_order"), xi=0.1)
  with pytest.raises(ValueError, match="methods is empty"):
    hc.compare(*args, methods=(), xi=0.1)
  with pytest.raises(ValueError, match="repeats must be"):
    hc.compare(*args, methods=("first_order",), repeats=0)
  vector = lambda params, alphas, batch: params["tail"] * q.train_loss(params, alphas, batch)
  with pytest.raises(ValueError, match=r"train_loss must return a scalar, got shape \(3,\)")\
      as err:
    hc.compare(vector, q.val_loss, p, a, None, None, methods=("unrolled",), xi=0.1,
               reference=None)
  assert any("'unrolled'" in n for n in err.value.__notes__)  # names the method
  opt = optax.sgd(0.1, momentum=0.9)
  other = {"head": p["head"], "tail": jnp.zeros((7,), jnp.float32)}
  with pytest.raises(ValueError, match="opt_state does not fit params"):
    hc.compare(*args, methods=("exact_hvp",), xi=0.1, w_opt=opt,
               w_opt_state=opt.init(other), reference=None)
  with pytest.raises(ValueError, match="pass w_opt and w_opt_state together"):
    hc.compare(*args, methods=("exact_hvp",), xi=0.1, w_opt=opt)
  with pytest.raises(ValueError, match="different structure"):
    hc.relative_error({"x": jnp.ones(2)}, [jnp.ones(2)])
  with pytest.raises(ValueError, match="leaf shapes"):
    hc.cosine_similarity({"x": jnp.ones(2)}, {"x": jnp.ones(3)})
  with pytest.raises(ValueError, match="reference must be 'exact_hvp' or 'unrolled'"):
    hc.fd_eps_sweep(*args, xi=0.1, reference="first_order")
  with pytest.raises(ValueError, match="positive step sizes"):
    hc.fd_eps_sweep(*args, xi=0.1, eps=(1e-2, 0.0))


# ---------------------------------------------------------------------------
# The `jdarts hypergrad` command.

@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  # One reduction cell of parameter-free candidates: second-order graphs
  # compile in seconds on CPU.
  return helpers.write_tiny_config(
      tmp_path_factory.mktemp("cfg"), "c.model.layers = 1",
      "c.model.primitives = ('none', 'skip_connect', 'avg_pool_3x3')",
      "c.hypergrad.methods = ('first_order', 'exact_hvp', 'finite_difference')",
      "c.hypergrad.reference = 'exact_hvp'", "c.hypergrad.repeats = 1",
      "c.hypergrad.fd_eps_num = 6")


def _table(out):
  lines = out.splitlines()
  start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["method", "cos-sim",
                                                                         "rel-err"])
  return {line.split()[0]: line.split() for line in lines[start + 2:start + 5]}


def test_cli_hypergrad_prints_table_and_writes_files(tiny_config, tmp_path, capsys):
  """Without a workdir: the table only. With a workdir holding a checkpoint:
  the restored state, the table, hypergrad.json, fd_sweep.csv and .png."""
  assert config_lib.hypergrad_defaults().methods == hypergrad.METHODS
  rc = cli.main(["hypergrad", f"--config={tiny_config}", "--config.hypergrad.fd_sweep=False"])
  out = capsys.readouterr().out
  assert rc == 0, out
  table = _table(out)
  assert set(table) == {"first_order", "exact_hvp", "finite_difference"}
  assert table["exact_hvp"][1:3] == ["1.000000", "0.00e+00"]
  assert "(initial state)" in out and "finite differences vs" not in out
  assert not os.path.exists("hypergrad.json")  # nothing written without a workdir

  # A checkpoint of a later state, as `jdarts search` leaves it.
  from jdarts import checkpoint, hypergrad_report
  cfg = cli._parse([f"--config={tiny_config}"], require_workdir=False)[0]
  state = hypergrad_report.build_state(cfg, None)["state"]
  state = state.replace(step=state.step + 7, alphas=jax.tree.map(
      lambda x: x + 0.3 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size,
      state.alphas))
  workdir = tmp_path / "run"
  with checkpoint.Checkpointer(str(workdir / "checkpoints")) as ckpt:
    ckpt.save(7, jax.device_get(state), force=True)
  rc = cli.main(["hypergrad", f"--config={tiny_config}", f"--workdir={workdir}",
                 "--config.hypergrad.fd_reference=unrolled",
                 "--config.hypergrad.float64=True"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "step 7 (restored)" in out and "wrote hypergrad.json, fd_sweep.csv" in out
  result = json.loads((workdir / "hypergrad.json").read_text())
  assert result["setting"]["restored_checkpoint_step"] == 7
  assert result["setting"]["step"] == 7 and result["setting"]["reference"] == "exact_hvp"
  assert [r["method"] for r in result["rows"]] == ["first_order", "exact_hvp",
                                                   "finite_difference"]
  for r in result["rows"]:
    assert {"cos_sim", "rel_err", "ms_per_call", "compile_s", "peak_bytes"} <= set(r)
  with open(workdir / "fd_sweep.csv") as f:
    sweep = list(csv.DictReader(f))
  assert [float(r["eps"]) for r in sweep] == pytest.approx(list(np.logspace(0, -10, 6)))
  assert {r["reference"] for r in sweep} == {"unrolled"}
  assert {r["dtype"] for r in sweep} == {"float64"}
  # Small enough steps stay between the ReLU kinks: eq. 8 is then accurate.
  assert min(float(r["rel_err"]) for r in sweep) < 1e-6, sweep
  assert "finite differences vs unrolled (float64)" in out
  assert (workdir / "fd_sweep.png").stat().st_size > 1000


def test_cli_hypergrad_bad_method_is_one_line(tiny_config, capsys):
  """An unknown method in --config.hypergrad.methods names the known ones."""
  rc = cli.main(["hypergrad", f"--config={tiny_config}",
                 "--config.hypergrad.methods=('exact_hvp','zeroth')"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1, err
  assert "'zeroth'" in err and "finite_difference" in err


# ---------------------------------------------------------------------------
# config.hypergrad_probe_every: the comparison recorded during a search.

def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_search_probe_records_estimators_without_changing_the_search(tiny_config, tmp_path,
                                                                      capsys):
  """Probe rows: on the step's state and batches (step 0 recomputed directly),
  exact_hvp agrees with unrolled where first_order visibly does not (so the
  probe used the step's xi and optimiser state); a resumed run replays its
  probes once; the probed search ends bitwise where an unprobed one ends."""
  probe_args = ["--config.hypergrad_probe_every=1", "--config.checkpoint.every_steps=1",
                "--config.hypergrad.reference=unrolled",
                "--config.hypergrad.methods=('first_order','exact_hvp')"]
  run1 = tmp_path / "probed"
  rc = cli.main(["search", f"--config={tiny_config}", f"--workdir={run1}",
                 "--config.max_steps=2"] + probe_args)
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "hypergrad probe at step 1 (cos-sim vs unrolled): first_order" in out
  rows = _jsonl(run1 / "hypergrad_probe.jsonl")
  assert [(r["step"], r["method"]) for r in rows] == [
      (0, "first_order"), (0, "exact_hvp"), (1, "first_order"), (1, "exact_hvp")]
  for r in rows:
    assert r["reference"] == "unrolled" and r["ms"] > 0
    assert (r["compile_s"] > 0) == (r["step"] == 0)
  for step in (0, 1):
    fo, ex = [r for r in rows if r["step"] == step]
    assert ex["rel_err"] < 1e-4 and ex["cos_sim"] > 1 - 1e-6, rows
    assert fo["rel_err"] > 100 * ex["rel_err"], rows

  # Step 0 by hand: the initial state, the first validation batch.
  from jdarts import hypergrad_report
  cfg = cli._parse([f"--config={tiny_config}"], require_workdir=False)[0]
  built = hypergrad_report.build_state(cfg, None)
  space, state = built["space"], built["state"]
  g = jax.grad(lambda a: space.loss(state.params, a, built["val_batch"], None, None)[0])(state.alphas)
  assert rows[0]["grad_norm"] == pytest.approx(float(np.linalg.norm(hc.flatten(g))),
                                               rel=1e-5)
  assert rows[0]["xi"] == pytest.approx(float(built["schedule"](0)))

  # Rows an interrupted run wrote after its last checkpoint (step 2) are replayed.
  with open(run1 / "hypergrad_probe.jsonl", "a") as f:
    f.write(json.dumps(dict(rows[-1], step=2, method="first_order")) + "\n")
    f.write('{"step": 3, "meth')  # cut short by a kill
  with open(run1 / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 9, "kind": "train", "train_loss": 0.0}) + "\n")
  rc = cli.main(["search", f"--config={tiny_config}", f"--workdir={run1}",
                 "--config.max_steps=3"] + probe_args)
  out = capsys.readouterr().out
  assert rc == 0, out
  rows = _jsonl(run1 / "hypergrad_probe.jsonl")
  assert [(r["step"], r["method"]) for r in rows] == [
      (s, m) for s in (0, 1, 2) for m in ("first_order", "exact_hvp")]
  assert rows[4]["compile_s"] > 0  # computed by the resumed run, not the planted row
  steps = [r["step"] for r in _jsonl(run1 / "metrics.jsonl") if r["kind"] == "train"]
  assert steps == [1, 2, 3]

  run2 = tmp_path / "plain"
  rc = cli.main(["search", f"--config={tiny_config}", f"--workdir={run2}",
                 "--config.max_steps=3"])
  assert rc == 0, capsys.readouterr().out
  assert not (run2 / "hypergrad_probe.jsonl").exists()
  assert (json.loads((run1 / "alphas.json").read_text())
          == json.loads((run2 / "alphas.json").read_text()))


def test_search_probe_bad_settings_are_one_line(tiny_config, tmp_path, capsys):
  """A negative interval, or an unknown probe method, stops before any step."""
  for args, words in [(["--config.hypergrad_probe_every=-1"], "hypergrad_probe_every"),
                      (["--config.hypergrad_probe_every=2",
                        "--config.hypergrad.methods=('exact_hvp','zeroth')"], "'zeroth'")]:
    rc = cli.main(["search", f"--config={tiny_config}", f"--workdir={tmp_path / 'bad'}"]
                  + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert words in err
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
