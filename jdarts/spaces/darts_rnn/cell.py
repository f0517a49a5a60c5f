"""The DARTS recurrent cell and the language model around it, in plain JAX.

Both forms of the cell (paper sec. 2.1, 3.1.2, A.1.2) follow the reference
(quark0/darts `rnn/model.py`, `rnn/model_search.py`):

* node 0 mixes x_t and h_{t-1}: [c, h] = [x_t, h_{t-1}] W0,
  s0 = h_{t-1} + sigmoid(c) * (tanh(h) - h_{t-1});
* every later node i applies an activation f to a highway-bypassed linear
  transform of an earlier node s: [c, h] = s W_i,
  s_i = s + sigmoid(c) * (f(h) - s). In the search cell W_i is shared by all
  the edges into node i (A.1.2), every earlier node feeds node i, and the
  edge's output is the softmax(alpha)-weighted sum over the activations
  ('none' contributes zero); s0 and every node are batch-normalised with the
  batch's statistics and no affine parameters (sec. 3.1.2, A.1.1);
* h_t is the mean of the intermediate nodes (the genotype's `concat`).

Variational (locked) dropout (Gal & Ghahramani 2016) draws one mask per
sequence segment and reuses it at every time step: on the embedded words
(`embed`), on x_t and h_{t-1} entering node 0 (`x`, `h`: the reference's
dropoutx, dropouth; `h` also masks every node entering a linear transform)
and on the cell's output before the tied softmax (`out`). Token-wise dropout
(`embed_tokens`, the reference's dropoute) zeroes whole rows of the embedding
matrix. Everything is time-major inside (T, B, .), batch-major outside.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

# Reference rnn/model.py INITRANGE: every weight ~ U(-0.04, 0.04), bias 0.
INIT_RANGE = 0.04

ACTIVATIONS: Dict[str, Callable] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


class DropoutRates(NamedTuple):
  """Dropout probabilities (the reference's flag in brackets).

  Attributes:
    embed_tokens: whole embedding rows (dropoute).
    embed: locked, on the embedded words (dropouti).
    x: locked, on x_t entering node 0 (dropoutx).
    h: locked, on h_{t-1} and on every node entering a linear transform (dropouth).
    out: locked, on the cell output before the softmax (dropout).
  """
  embed_tokens: float = 0.0
  embed: float = 0.0
  x: float = 0.0
  h: float = 0.0
  out: float = 0.0


class Masks(NamedTuple):
  """Locked dropout masks of one segment, each (B, D) or None (no dropout)."""
  embed_rows: Optional[jnp.ndarray]   # (V, 1)
  embed: Optional[jnp.ndarray]
  x: Optional[jnp.ndarray]
  h: Optional[jnp.ndarray]
  out: Optional[jnp.ndarray]


def init_params(rng: jnp.ndarray, vocab_size: int, hidden: int, steps: int,
                dtype=jnp.float32) -> Dict[str, jnp.ndarray]:
  """The weights of a one-cell language model with tied embedding and softmax.

  Returns:
    {'embedding': (V, H), 'decoder_bias': (V,), 'w0': (2H, 2H), 'ws': (steps, H, 2H)};
    the embedding size equals the hidden size (the reference asserts it).
  """
  k_emb, k_w0, k_ws = jax.random.split(rng, 3)
  u = lambda k, shape: jax.random.uniform(k, shape, dtype, -INIT_RANGE, INIT_RANGE)
  return {"embedding": u(k_emb, (vocab_size, hidden)),
          "decoder_bias": jnp.zeros((vocab_size,), dtype),
          "w0": u(k_w0, (2 * hidden, 2 * hidden)),
          "ws": u(k_ws, (steps, hidden, 2 * hidden))}


def locked_mask(rng: jnp.ndarray, shape: Sequence[int], rate: float, dtype) -> Optional[jnp.ndarray]:
  """Bernoulli(1 - rate) / (1 - rate) of `shape`, or None when `rate` is 0."""
  if not rate:
    return None
  keep = 1.0 - rate
  return jax.random.bernoulli(rng, keep, tuple(shape)).astype(dtype) / keep


def draw_masks(rng: jnp.ndarray, rates: DropoutRates, batch: int, vocab: int, hidden: int,
               dtype) -> Masks:
  """One segment's masks: per example (B, H), shared by all its time steps."""
  ks = jax.random.split(rng, 5)
  return Masks(locked_mask(ks[0], (vocab, 1), rates.embed_tokens, dtype),
               locked_mask(ks[1], (batch, hidden), rates.embed, dtype),
               locked_mask(ks[2], (batch, hidden), rates.x, dtype),
               locked_mask(ks[3], (batch, hidden), rates.h, dtype),
               locked_mask(ks[4], (batch, hidden), rates.out, dtype))


def _apply(x, mask):
  return x if mask is None else x * mask


def batch_norm(x: jnp.ndarray, axis_name: Optional[str] = None, eps: float = 1e-5) -> jnp.ndarray:
  """(B, H) normalised per feature with the batch's moments, no affine (A.1.1).

  With `axis_name` the moments are averaged over that device axis, so the
  split batch is normalised as the whole one.
  """
  mean, mean_sq = jnp.mean(x, axis=0), jnp.mean(x * x, axis=0)
  if axis_name is not None:
    mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
  var = jnp.maximum(mean_sq - mean * mean, 0.0)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _highway(s: jnp.ndarray, ch: jnp.ndarray, fn: Callable) -> jnp.ndarray:
  c, h = jnp.split(ch, 2, axis=-1)
  return s + jax.nn.sigmoid(c) * (fn(h) - s)


def first_node(w0, x, h_prev, masks: Masks) -> jnp.ndarray:
  """s0 = h + sigmoid(c) (tanh(h0) - h), [c, h0] = [x * mask_x, h * mask_h] W0; (B, H)."""
  xh = jnp.concatenate([_apply(x, masks.x), _apply(h_prev, masks.h)], axis=-1)
  return _highway(h_prev, xh @ w0, jnp.tanh)


def search_cell(w0, ws, probs, primitives: Sequence[str], x, h_prev, masks: Masks, *,
                bn_axis_name: Optional[str] = None) -> jnp.ndarray:
  """One time step of the mixed cell: (B, H) inputs -> h_t (B, H).

  Args:
    w0: (2H, 2H); ws: (steps, H, 2H), node i's transform shared by its edges.
    probs: (steps (steps + 1) / 2, ops) edge weights; the edges into node i
      (from nodes 0..i-1) follow those into node i-1, as in the reference.
    primitives: the op names of `probs`' columns.
  """
  cols = [k for k, name in enumerate(primitives) if name != "none"]
  acts = [ACTIVATIONS[primitives[k]] for k in cols]
  s0 = batch_norm(first_node(w0, x, h_prev, masks), bn_axis_name)
  states = s0[None]
  offset = 0
  for i in range(ws.shape[0]):
    c, h = jnp.split(_apply(states, masks.h) @ ws[i], 2, axis=-1)   # (i + 1, B, H)
    c = jax.nn.sigmoid(c)
    p = probs[offset:offset + i + 1][:, cols]                       # (i + 1, K)
    # sum_k p_k (s + c (f_k(h) - s)) = P s + c (sum_k p_k f_k(h) - P s), P = sum_k p_k:
    # the same sum as the reference's loop over ops, in fewer (XLA:CPU-costly) ops.
    mixed = jnp.einsum("jk,kjbh->jbh", p, jnp.stack([fn(h) for fn in acts]))
    kept = jnp.sum(p, axis=1)[:, None, None] * states
    node = jnp.sum(kept + c * (mixed - kept), axis=0)
    states = jnp.concatenate([states, batch_norm(node, bn_axis_name)[None]], axis=0)
    offset += i + 1
  return jnp.mean(states[1:], axis=0)


def discrete_cell(w0, ws, genotype, x, h_prev, masks: Masks) -> jnp.ndarray:
  """One time step of a genotype's cell (no normalisation): h_t (B, H)."""
  states = [first_node(w0, x, h_prev, masks)]
  for i, (name, pred) in enumerate(genotype.recurrent):
    s = states[pred]
    states.append(_highway(s, _apply(s, masks.h) @ ws[i], ACTIVATIONS[name]))
  return jnp.mean(jnp.stack([states[i] for i in genotype.concat]), axis=0)


class Forward(NamedTuple):
  """What one segment produces: per-token NLL (B, T), raw cell outputs (T, B, H), h_T."""
  nll: jnp.ndarray
  raw: jnp.ndarray
  last: jnp.ndarray


def forward(params, cell: Callable, inputs, targets, h0, masks: Masks, *,
            time_loop: str = "scan", valid: Optional[jnp.ndarray] = None) -> Forward:
  """The language model over one BPTT segment.

  Args:
    params: `init_params`' dict.
    cell: `(x (B, H), h (B, H), masks) -> h_t`.
    inputs, targets: (B, T) int32 token ids.
    h0: (B, H) the hidden state carried from the previous segment.
    masks: this segment's dropout masks (`draw_masks`; all None: no dropout).
    time_loop: 'scan' (`jax.lax.scan`) or 'python' (an unrolled loop).
    valid: optional (T,) bool; after the first False the hidden state stops
      changing, so a padded segment carries the state of its real end.
  """
  emb_w = _apply(params["embedding"], masks.embed_rows)
  x = _apply(jnp.take(emb_w, inputs.T, axis=0), masks.embed)   # (T, B, H)
  valid = jnp.ones(x.shape[:1], bool) if valid is None else valid

  def step(h, xs):
    x_t, ok = xs
    h_new = cell(x_t, h, masks)
    h_new = jnp.where(ok, h_new, h)
    return h_new, h_new

  if time_loop == "scan":
    last, raw = jax.lax.scan(step, h0, (x, valid))
  else:
    h, outs = h0, []
    for t in range(x.shape[0]):
      h, out = step(h, (x[t], valid[t]))
      outs.append(out)
    last, raw = h, jnp.stack(outs)
  out = _apply(raw, masks.out)
  logits = out @ params["embedding"].T + params["decoder_bias"]     # tied softmax
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets.T[..., None], axis=-1)[..., 0]
  return Forward(nll.T, raw, last)


def temporal_activation_penalty(raw: jnp.ndarray, valid: Optional[jnp.ndarray] = None
                                ) -> jnp.ndarray:
  """Merity et al. (2018) TAR: mean of (h_t - h_{t-1})^2 over the raw outputs (T, B, H).

  With `valid` (T,), the mean is over the real steps only (after them the
  state is frozen, so the padded differences are zero).
  """
  sq = jnp.square(raw[1:] - raw[:-1])
  if valid is None:
    return jnp.mean(sq)
  n = jnp.maximum(jnp.sum(valid[1:]), 1) * raw.shape[1] * raw.shape[2]
  return jnp.sum(sq) / n.astype(sq.dtype)
