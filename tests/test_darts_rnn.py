"""The DARTS recurrent space (issue 13): cell, recurrence, dropout, derivation, gradients.

Everything is tiny (vocab 50, hidden 8, T 5, B 4, 2-3 nodes) so each graph
compiles in seconds on CPU. The cells are checked against a NumPy
transcription of the reference's loops (quark0/darts rnn/model_search.py,
rnn/model.py): one edge and one op at a time, as written there.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdarts import hypergrad, search, spaces
from jdarts.data import text
from jdarts.spaces.darts_rnn import cell as cell_lib
from jdarts.spaces.darts_rnn import genotypes as g
from jdarts.spaces.darts_rnn.space import derive

V, H, T, B = 50, 8, 5, 4
NO_MASKS = cell_lib.Masks(None, None, None, None, None)


def _space(**model):
  cfg = dict(hidden=H, steps=3, bptt=T, alpha_init_scale=0.5)
  cfg.update(model)
  return spaces.get_space("darts_rnn", cfg, text.TextInfo("t", V))


def _batch(seed=0, t=T, deterministic=False):
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, V, (B, t + 1)).astype(np.int32)
  b = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
  if deterministic:
    b["deterministic"] = np.ones((B,), bool)
  return b


# --- NumPy transcription of the reference cells ------------------------------------

def _sig(x):
  return 1.0 / (1.0 + np.exp(-x))


NP_ACT = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0), "sigmoid": _sig,
          "identity": lambda x: x}


def _np_bn(x):
  return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)


def _np_s0(w0, x, h, xm, hm):
  ch = np.concatenate([x * xm, h * hm], -1) @ w0
  c, hh = np.split(ch, 2, -1)
  return h + _sig(c) * (np.tanh(hh) - h)


def _np_search_cell(w0, ws, probs, x, h, xm, hm, prims):
  states = [_np_bn(_np_s0(w0, x, h, xm, hm))]
  offset = 0
  for i in range(len(ws)):
    s = np.zeros_like(states[0])
    for k, name in enumerate(prims):
      if name == "none":
        continue
      for j, st in enumerate(states):
        c, hh = np.split((st * hm) @ ws[i], 2, -1)
        s += probs[offset + j, k] * (st + _sig(c) * (NP_ACT[name](hh) - st))
    states.append(_np_bn(s))
    offset += i + 1
  return np.mean(states[1:], 0)


def _np_discrete_cell(w0, ws, genotype, x, h, xm, hm):
  states = [_np_s0(w0, x, h, xm, hm)]
  for i, (name, pred) in enumerate(genotype.recurrent):
    sp = states[pred]
    c, hh = np.split((sp * hm) @ ws[i], 2, -1)
    states.append(sp + _sig(c) * (NP_ACT[name](hh) - sp))
  return np.mean([states[i] for i in genotype.concat], 0)


def test_cells_match_the_reference_loops_and_shapes(x64):
  rng = np.random.RandomState(0)
  w0 = rng.uniform(-0.5, 0.5, (2 * H, 2 * H))
  ws = rng.uniform(-0.5, 0.5, (3, H, 2 * H))
  probs = jax.nn.softmax(rng.randn(6, 5), -1)
  x, h = rng.randn(B, H), rng.randn(B, H)
  xm, hm = (rng.rand(B, H) > 0.3) / 0.7, (rng.rand(B, H) > 0.3) / 0.7
  masks = cell_lib.Masks(None, None, jnp.asarray(xm), jnp.asarray(hm), None)
  out = cell_lib.search_cell(jnp.asarray(w0), jnp.asarray(ws), probs, g.RNN_PRIMITIVES,
                             jnp.asarray(x), jnp.asarray(h), masks)
  assert out.shape == (B, H)
  want = _np_search_cell(w0, ws, np.asarray(probs), x, h, xm, hm, g.RNN_PRIMITIVES)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-10, atol=1e-12)
  ws8 = rng.uniform(-0.5, 0.5, (8, H, 2 * H))
  for geno in (g.RNN_DARTS_V2, g.RNN_DARTS_V1):
    d = cell_lib.discrete_cell(jnp.asarray(w0), jnp.asarray(ws8), geno, jnp.asarray(x),
                               jnp.asarray(h), masks)
    np.testing.assert_allclose(np.asarray(d), _np_discrete_cell(w0, ws8, geno, x, h, xm, hm),
                               rtol=1e-10, atol=1e-12)
  # The language model around the cell: per-token NLL (B, T), raw outputs (T, B, H).
  space = _space()
  params = space.init(jax.random.PRNGKey(0), space.example_batch(B))
  assert params["w0"].shape == (2 * H, 2 * H) and params["ws"].shape == (3, H, 2 * H)
  assert space.init_alphas(jax.random.PRNGKey(0))["recurrent"].shape == (6, 5)
  fwd = cell_lib.forward(params, space.cell_fn(params, space.init_alphas(jax.random.PRNGKey(1))),
                         *_batch().values(), space.init_carry(B), NO_MASKS)
  assert fwd.nll.shape == (B, T) and fwd.raw.shape == (T, B, H) and fwd.last.shape == (B, H)


def test_scan_equals_python_loop_and_segments_chain():
  """lax.scan == an explicit loop; two carried segments == one long one (dropout off)."""
  space = _space()
  params = space.init(jax.random.PRNGKey(0), space.example_batch(B))
  alphas = space.init_alphas(jax.random.PRNGKey(1))
  cell = space.cell_fn(params, alphas)
  long = _batch(t=2 * T)
  h0 = 0.1 * jnp.ones((B, H))
  scan = cell_lib.forward(params, cell, long["inputs"], long["targets"], h0, NO_MASKS)
  loop = cell_lib.forward(params, cell, long["inputs"], long["targets"], h0, NO_MASKS,
                          time_loop="python")
  np.testing.assert_allclose(scan.nll, loop.nll, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scan.last, loop.last, rtol=1e-5, atol=1e-6)
  # The loss through the space, carrying h across two segments.
  half = lambda b, s: {k: v[:, s] for k, v in b.items()} | {"deterministic": np.ones((B,), bool)}
  l1, a1, c1 = space.loss(params, alphas, half(long, slice(0, T)), jax.random.PRNGKey(3), h0)
  l2, a2, c2 = space.loss(params, alphas, half(long, slice(T, 2 * T)), jax.random.PRNGKey(4), c1)
  np.testing.assert_allclose((l1 + l2) / 2, scan.nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(c2, scan.last, rtol=1e-5, atol=1e-6)
  assert float(a1["count"]) == B * T
  # Without carrying the state the second half differs: the carry matters.
  l2_fresh = space.loss(params, alphas, half(long, slice(T, 2 * T)), jax.random.PRNGKey(4),
                        h0)[0]
  assert abs(float(l2_fresh - l2)) > 1e-6


def test_locked_dropout_masks_constant_in_time_different_over_batch():
  """A cell that returns x_t shows the embedding mask: same at every t, differs by row."""
  params = {"embedding": jnp.ones((V, H)), "decoder_bias": jnp.zeros((V,))}
  rates = cell_lib.DropoutRates(embed=0.5)
  masks = cell_lib.draw_masks(jax.random.PRNGKey(0), rates, B, V, H, jnp.float32)
  assert masks.x is None and masks.h is None and masks.embed.shape == (B, H)
  b = _batch(t=2 * T)
  fwd = cell_lib.forward(params, lambda x, h, m: x, b["inputs"], b["targets"],
                         jnp.zeros((B, H)), masks)
  raw = np.asarray(fwd.raw)                                    # (T, B, H) = mask per step
  assert set(np.unique(raw)) <= {0.0, 2.0} and 0 < (raw == 0).mean() < 1
  assert (raw == raw[:1]).all(), "the mask changed over time"
  assert len({raw[0, i].tobytes() for i in range(B)}) == B, "rows share a mask"
  other = cell_lib.draw_masks(jax.random.PRNGKey(1), rates, B, V, H, jnp.float32)
  assert not np.array_equal(masks.embed, other.embed)
  # The space draws its masks from the step's key: same key, same loss; other key, other.
  space = _space(dropout_x=0.5, dropout_h=0.5, dropout_out=0.5, dropout_embed=0.5)
  p = space.init(jax.random.PRNGKey(0), space.example_batch(B))
  a, c = space.init_alphas(jax.random.PRNGKey(1)), space.init_carry(B)
  loss = lambda k: float(space.loss(p, a, _batch(), jax.random.PRNGKey(k), c)[0])
  assert loss(5) == loss(5) != loss(6)


def test_derive_from_hand_made_alphas():
  """k = 1: the strongest input by its best non-'none' op; 'none' never chosen."""
  prims = g.RNN_PRIMITIVES  # none, tanh, relu, sigmoid, identity
  a = np.zeros((6, 5))
  a[0] = [9, 0, 3, 0, 0]          # node 1 <- node 0: none is largest, relu wins
  a[1] = [0, 1, 0, 0, 0]          # node 2 <- node 0 (tanh 1) ...
  a[2] = [0, 0, 0, 0, 2]          # ... or node 1 (identity 2): node 1 wins
  a[3] = [0, 0, 0, 5, 0]          # node 3 <- node 0 sigmoid 5 beats the others
  a[4] = [0, 4, 0, 0, 0]
  a[5] = [9, 0, 0, 0, 0.5]
  geno = derive({"recurrent": a}, prims, steps=3)
  assert geno.recurrent == [("relu", 0), ("identity", 1), ("sigmoid", 0)]
  assert geno.concat == [1, 2, 3]
  space = _space()
  assert space.genotype_json(geno) == {"recurrent": [["relu", 0], ["identity", 1],
                                                     ["sigmoid", 0]], "concat": [1, 2, 3]}
  assert "1<-relu(0)" in space.format_genotype(geno)


def test_perplexity_falls_on_a_tiny_corpus():
  """SGD on a short repeated text: held-out (deterministic) perplexity drops."""
  space = _space(dropout_x=0.1, dropout_h=0.1, dropout_out=0.1, dropout_embed=0.1)
  words = " ".join(["the cat sat on the mat"] * 40).split()
  ids = np.asarray([hash(w) % V for w in words], np.int32)
  data = text.batchify(ids, B)
  batch = {"inputs": data[:, :T], "targets": data[:, 1:T + 1]}
  det = dict(batch, deterministic=np.ones((B,), bool))
  p, a, c = (space.init(jax.random.PRNGKey(0), batch), space.init_alphas(jax.random.PRNGKey(1)),
             space.init_carry(B))
  opt = optax.chain(optax.clip_by_global_norm(0.25), optax.sgd(20.0))
  grad = jax.jit(jax.grad(lambda p, k: space.loss(p, a, batch, k, c)[0]))
  evaluate = jax.jit(lambda p: space.loss(p, a, det, None, c)[1])
  first = float(evaluate(p)["loss"])
  state = opt.init(p)
  for i in range(15):
    u, state = opt.update(grad(p, jax.random.PRNGKey(i)), state, p)
    p = optax.apply_updates(p, u)
  last = float(evaluate(p)["loss"])
  assert space.summarize({"loss": last})["perplexity"] < 0.5 * np.exp(first), (first, last)


@pytest.mark.slow  # minutes of second-order compilation on 2 CPU cores; --runslow
def test_exact_hvp_equals_unrolled_in_float64(x64):
  """Plain-SGD virtual step: eq. 7 by Hessian-vector products == autodiff through it."""
  space = _space(dtype="float64", dropout_x=0.3, dropout_h=0.3, dropout_out=0.3,
                 dropout_embed=0.2)
  p = space.init(jax.random.PRNGKey(0), space.example_batch(B))
  a = space.init_alphas(jax.random.PRNGKey(1))
  carry = 0.1 * jnp.ones((B, H), jnp.float64)
  key = jax.random.PRNGKey(7)
  loss = search.bind_loss(space, key, carry)
  args = (loss, loss, p, a, _batch(0), _batch(1))
  unrolled = hypergrad.arch_grad("unrolled", *args, xi=0.5, has_aux=True)
  exact = hypergrad.arch_grad("exact_hvp", *args, xi=0.5, has_aux=True)
  first = hypergrad.arch_grad("first_order", *args, xi=0.5, has_aux=True)
  u, e, f = (np.asarray(x[0]["recurrent"]) for x in (unrolled, exact, first))  # (grad, aux)
  np.testing.assert_allclose(e, u, rtol=1e-9, atol=1e-13)
  assert np.abs(u - f).max() > 1e-3 * np.abs(u).max(), "the second-order term vanished"


def test_space_is_registered_and_checks_its_config():
  from jdarts.config_lib import ConfigError
  assert "darts_rnn" in spaces.BUILTIN
  assert isinstance(_space(), spaces.SearchSpace)
  with pytest.raises(ConfigError, match="model.dropout_h must be a dropout probability"):
    _space(dropout_h=1.0)
  with pytest.raises(ConfigError, match="model.primitives must name activations"):
    _space(primitives=("none", "conv"))
