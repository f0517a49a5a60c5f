"""`jdarts train` for recurrent language models (issue 13): ASGD, random BPTT, resume.

A genotype's network is trained on the first 400 tokens of the offline
'pydoc' corpus at hidden 8; ASGD is forced on after one epoch so a stopped
and resumed run must restore the averaged weights from its checkpoint.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdarts import cli, lm_train_loop
from jdarts.config_lib import ConfigError
from jdarts.spaces.darts_rnn import genotypes as g
from jdarts.spaces.darts_rnn import network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_random_bptt_lengths_are_the_reference_distribution():
  lengths = np.array([lm_train_loop.seq_len(0, s, 35, 20) for s in range(2000)])
  assert lengths.min() >= 5 and lengths.max() <= 55
  assert 33 < lengths.mean() < 35.5                 # 0.95 * 35 + 0.05 * 17.5 = 34.1
  assert 0.02 < (lengths < 25).mean() < 0.1         # the bptt / 2 branch
  assert lengths[7] == lm_train_loop.seq_len(0, 7, 35, 20)   # (seed, step) decides


def test_asgd_averages_the_iterates_since_the_switch():
  net = network.RNNNetwork(g.RNN_DARTS_V2, 20, dict(hidden=4, bptt=3))
  tx = optax.sgd(0.5)
  p = net.init(jax.random.PRNGKey(0))
  state = lm_train_loop.LMState(p, tx.init(p), net.init_carry(2), p, jnp.zeros((), jnp.int32),
                                jnp.zeros((), jnp.int32), jax.random.PRNGKey(1))
  step = jax.jit(lm_train_loop.make_train_step(net, tx))
  rng = np.random.RandomState(0)
  batch = lambda: {"inputs": rng.randint(0, 20, (2, 3)), "targets": rng.randint(0, 20, (2, 3))}
  valid, one = np.ones(3, bool), np.float32(1.0)
  state, _ = step(state, batch(), valid, one, np.bool_(False), np.bool_(True))
  np.testing.assert_array_equal(state.avg["w0"], p["w0"])   # SGD phase: untouched
  iterates = []
  for _ in range(3):
    state, _ = step(state, batch(), valid, one, np.bool_(True), np.bool_(False))
    iterates.append(np.asarray(state.params["w0"]))
  assert int(state.avg_count) == 3
  np.testing.assert_allclose(state.avg["w0"], np.mean(iterates, 0), rtol=1e-5, atol=1e-7)
  # lr_scale multiplies the step (the reference's lr * seq_len / bptt).
  b = batch()
  full, _ = step(state, b, valid, one, np.bool_(False), np.bool_(False))
  half, _ = step(state, b, valid, np.float32(0.5), np.bool_(False), np.bool_(False))
  np.testing.assert_allclose(half.params["w0"] - state.params["w0"],
                             0.5 * (full.params["w0"] - state.params["w0"]), rtol=1e-4, atol=1e-8)
  # A padded segment: the state stops at the real end and padding costs nothing.
  padded = {k: np.concatenate([v, np.zeros((2, 2), v.dtype)], 1) for k, v in b.items()}
  padded["token_mask"] = np.concatenate([np.ones((2, 3)), np.zeros((2, 2))], 1).astype(np.float32)
  short, aux_s = step(state, b, valid, one, np.bool_(False), np.bool_(False))
  long, aux_l = step(state, padded, np.arange(5) < 3, one, np.bool_(False), np.bool_(False))
  np.testing.assert_allclose(long.carry, short.carry, rtol=1e-6)
  np.testing.assert_allclose(aux_l["loss"], aux_s["loss"], rtol=1e-6)
  assert float(aux_l["count"]) == 6


def test_genotypes_load_by_name_or_file(tmp_path):
  assert network.load_genotype("DARTS_V2") == g.RNN_DARTS_V2
  path = tmp_path / "genotype.json"
  path.write_text(json.dumps({"recurrent": [["relu", 0], ["tanh", 1]], "concat": [1, 2]}))
  assert network.load_genotype(str(path)).recurrent == [("relu", 0), ("tanh", 1)]
  with pytest.raises(ConfigError, match="neither a published recurrent cell"):
    network.load_genotype("NOPE")
  with pytest.raises(ConfigError, match="node 2 = tanh\\(5\\)"):
    network.RNNNetwork(g.RNNGenotype([("relu", 0), ("tanh", 5)], [1, 2]), 10, dict(hidden=4))


def test_summary_counts_as_the_reference(capsys):
  """(V + 1) H ... : V H tied embedding + V bias + 4 H^2 (W0) + 8 * 2 H^2 (W_1..8)."""
  assert cli.main(["summary", f"--config={ROOT}/configs/train_ptb.py", "--json"]) == 0
  s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  v, h = 10000, 850
  assert s["params"] == v * h + v + 4 * h * h + 8 * 2 * h * h == 22_960_000


_CONFIG = '''import importlib.util


def get_config():
  spec = importlib.util.spec_from_file_location("t", {path!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.name = "pydoc"
  c.data.train_tokens = 400
  c.data.max_seq_len_delta, c.data.length_bucket = 2, 7
  c.data.eval_batch_size = c.data.test_batch_size = 40
  c.model.hidden, c.model.bptt = 8, 5
  c.batch_size, c.epochs, c.log_every = 4, 3, 5
  c.asgd_after_epochs = 1
  c.checkpoint.every_steps = 7
  c.progress = False
  c.compilation_cache_dir = {cache!r}
  return c
'''


def test_cli_train_resume_equals_uninterrupted_with_asgd(tmp_path, capsys):
  config = tmp_path / "lm.py"
  config.write_text(_CONFIG.format(path=f"{ROOT}/configs/train_ptb.py",
                                   cache=str(tmp_path / "xla")))
  run = lambda wd, n: cli.main(["train", f"--config={config}", f"--workdir={wd}",
                                f"--config.max_steps={n}"])
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  assert run(whole, 40) == 0          # 19 steps per epoch: ASGD from step 19 on
  assert run(parts, 30) == 0          # stops inside the averaged phase
  assert run(parts, 40) == 0
  out = capsys.readouterr().out
  rows = lambda wd: [{k: v for k, v in json.loads(x).items() if k not in ("time", "tokens_per_sec")}
                     for x in (wd / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in rows(whole) if r["kind"] == "epoch"]
  assert [r["asgd"] for r in epochs] == [False, True, True] and epochs[0]["switched_to_asgd"]
  # The stopped run's own final evaluation (step 30) is its extra row.
  assert [r for r in rows(parts) if r["kind"] != "final" and r["step"] != 30] == \
      [r for r in rows(whole) if r["kind"] != "final" and r["step"] != 30]
  sw, sp = (json.loads((wd / "summary.json").read_text()) for wd in (whole, parts))
  assert sw["valid_perplexity"] == sp["valid_perplexity"]
  assert sw["test_perplexity"] == sp["test_perplexity"] and sp["asgd"]
  assert "switching to averaged SGD" in out and "final: valid perplexity" in out
