"""The DARTS recurrent search space on the space protocol, registered as 'darts_rnn'.

A one-cell language model (paper sec. 3.1.2, A.1.2): embedding -> the mixed
recurrent cell of `cell.search_cell`, run over time by `jax.lax.scan` ->
softmax tied to the embedding. alphas = {'recurrent': (steps (steps + 1) / 2,
ops)}, one row per edge (node i's edges from nodes 0..i-1 follow node i-1's);
the carry is the (B, H) hidden state at the end of the previous segment of the
same stream (truncated BPTT: the search step stops its gradient).

Batches: {'inputs': (B, T) int32, 'targets': (B, T) int32} and, in
evaluation batches, 'token_mask' (B, T) (0 on padding after the corpus ends)
and 'deterministic' (B,): its presence turns dropout off (the reference's
`model.eval()`); batch-statistics normalisation stays on, as the search
network has no running averages (A.1.1). `aux['loss']` is the mean NLL per
real token, 'count' the number of real tokens; `summarize` adds perplexity.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdarts.config_lib import ConfigError
from jdarts.spaces.base import SPACES, SpaceBase, config_get
from jdarts.spaces.darts_rnn import cell as cell_lib
from jdarts.spaces.darts_rnn.genotypes import RNN_PRIMITIVES, RNNGenotype, format_genotype

DEFAULTS = dict(hidden=300, steps=8, bptt=35, primitives=RNN_PRIMITIVES,
                dropout_embed_tokens=0.0, dropout_embed=0.2, dropout_x=0.75,
                dropout_h=0.25, dropout_out=0.75, tar_beta=1e-3, alpha_init_scale=1e-3,
                time_loop="scan", dtype="float32")


def _int(cfg, key, low):
  v = cfg.get(key)
  if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
    raise ConfigError(f"model.{key} must be an integer >= {low}, got {v!r}.")


def _rate(cfg, key):
  v = cfg.get(key)
  if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0):
    raise ConfigError(f"model.{key} must be a dropout probability in [0, 1), got {v!r}.")


def validate_lm_config(cfg: Mapping[str, Any]) -> None:
  """The checks shared by the search space and the evaluation network (one line each)."""
  cfg = {**DEFAULTS, **cfg}
  for key in ("hidden", "bptt"):
    _int(cfg, key, 1)
  for key in ("dropout_embed_tokens", "dropout_embed", "dropout_x", "dropout_h", "dropout_out"):
    _rate(cfg, key)
  beta = cfg["tar_beta"]
  if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
    raise ConfigError(f"model.tar_beta must be a finite number >= 0, got {beta!r}.")
  if cfg["time_loop"] not in ("scan", "python"):
    raise ConfigError(f"model.time_loop must be 'scan' or 'python', got {cfg['time_loop']!r}.")
  if cfg["dtype"] not in ("float32", "float64"):
    raise ConfigError(f"model.dtype must be 'float32' or 'float64', got {cfg['dtype']!r}.")


def rates_of(cfg: Mapping[str, Any]) -> cell_lib.DropoutRates:
  """The `DropoutRates` of a model block."""
  cfg = {**DEFAULTS, **cfg}
  return cell_lib.DropoutRates(cfg["dropout_embed_tokens"], cfg["dropout_embed"],
                               cfg["dropout_x"], cfg["dropout_h"], cfg["dropout_out"])


def lm_loss(params, batch, rng, carry, cell, *, rates, vocab, hidden, tar_beta, time_loop,
            dtype, valid=None):
  """(loss, aux, new carry) of a one-cell language model on a batch (module docstring).

  `valid`: optional (T,) bool of `cell_lib.forward` (random-length BPTT padding).
  """
  inputs, targets = batch["inputs"], batch["targets"]
  train = "deterministic" not in batch
  if train:
    masks = cell_lib.draw_masks(rng, rates, inputs.shape[0], vocab, hidden, dtype)
  else:
    masks = cell_lib.Masks(None, None, None, None, None)
  fwd = cell_lib.forward(params, cell, inputs, targets, carry, masks, time_loop=time_loop,
                         valid=valid)
  token_mask = batch.get("token_mask")
  token_mask = jnp.ones(fwd.nll.shape, fwd.nll.dtype) if token_mask is None else token_mask
  count = jnp.sum(token_mask)
  nll = jnp.sum(fwd.nll * token_mask) / jnp.maximum(count, 1.0)
  loss = nll
  if train and tar_beta:
    loss = loss + tar_beta * cell_lib.temporal_activation_penalty(fwd.raw, valid)
  aux = {"loss": nll.astype(jnp.float32), "count": count.astype(jnp.float32)}
  return loss, aux, fwd.last


def summarize_lm(means: Dict[str, float]) -> Dict[str, float]:
  """Count-weighted means plus perplexity = exp(mean NLL per token)."""
  out = dict(means)
  out["perplexity"] = float(math.exp(min(means["loss"], 700.0)))
  return out


def num_edges(steps: int) -> int:
  """Edges of the search cell: node i (1-based) has i incoming edges."""
  return steps * (steps + 1) // 2


@SPACES.register("darts_rnn")
class DartsRNNSpace(SpaceBase):
  """The DARTS recurrent search space (see the module docstring)."""
  name = "darts_rnn"
  metric_names = ()

  def __init__(self, vocab_size: int, model_cfg: Mapping[str, Any],
               bn_axis_name: Optional[str] = None):
    cfg = {**DEFAULTS, **model_cfg}
    self.vocab_size, self.hidden, self.steps = int(vocab_size), cfg["hidden"], cfg["steps"]
    self.bptt, self.primitives = cfg["bptt"], tuple(cfg["primitives"])
    self.rates, self.tar_beta = rates_of(cfg), float(cfg["tar_beta"])
    self.alpha_init_scale, self.time_loop = float(cfg["alpha_init_scale"]), cfg["time_loop"]
    self.dtype = jnp.dtype(cfg["dtype"])
    self.bn_axis_name = bn_axis_name

  @classmethod
  def validate_config(cls, model_cfg):
    cfg = {**DEFAULTS, **model_cfg}
    validate_lm_config(cfg)
    _int(cfg, "steps", 1)
    prims = tuple(cfg["primitives"])
    bad = [p for p in prims if p != "none" and p not in cell_lib.ACTIVATIONS]
    if bad or not [p for p in prims if p != "none"]:
      raise ConfigError(f"model.primitives must name activations from {RNN_PRIMITIVES} "
                        f"(at least one besides 'none'), got {prims!r}.")

  @classmethod
  def from_config(cls, model_cfg, info, *, bn_axis_name=None):
    vocab = config_get(info, "vocab_size", None)
    if not vocab:
      raise ConfigError(f"data: dataset {config_get(info, 'name', '?')!r} gives no vocab_size;"
                        " the darts_rnn space needs a text dataset (ptb, wikitext2, pydoc).")
    return cls(vocab, model_cfg, bn_axis_name)

  def example_batch(self, batch_size):
    z = jnp.zeros((batch_size, self.bptt), jnp.int32)
    return {"inputs": z, "targets": z}

  def init(self, rng, batch):
    del batch
    return cell_lib.init_params(rng, self.vocab_size, self.hidden, self.steps, self.dtype)

  def init_alphas(self, rng):
    shape = (num_edges(self.steps), len(self.primitives))
    return {"recurrent": self.alpha_init_scale * jax.random.normal(rng, shape, self.dtype)}

  def init_carry(self, batch_size):
    return jnp.zeros((batch_size, self.hidden), self.dtype)

  def cell_fn(self, params, alphas):
    """`(x, h, masks) -> h_t` of the mixed cell at these weights and alphas."""
    probs = jax.nn.softmax(alphas["recurrent"], axis=-1)
    return lambda x, h, masks: cell_lib.search_cell(
        params["w0"], params["ws"], probs, self.primitives, x, h, masks,
        bn_axis_name=self.bn_axis_name)

  def loss(self, params, alphas, batch, rng, carry):
    return lm_loss(params, batch, rng, carry, self.cell_fn(params, alphas),
                   rates=self.rates, vocab=self.vocab_size, hidden=self.hidden,
                   tar_beta=self.tar_beta, time_loop=self.time_loop, dtype=self.dtype)

  def summarize(self, means):
    return summarize_lm(means)

  def derive(self, alphas) -> RNNGenotype:
    return derive(alphas, self.primitives, self.steps)

  def genotype_json(self, genotype):
    return {"recurrent": [list(e) for e in genotype.recurrent],
            "concat": list(genotype.concat)}

  def format_genotype(self, genotype):
    return format_genotype(genotype)


def derive(alphas, primitives=RNN_PRIMITIVES, steps: int = 8) -> RNNGenotype:
  """k = 1 (sec. 2.4): each node keeps its strongest input by its best non-'none' op.

  As the reference's `genotype()`: softmax over all ops (none included), the
  input whose best non-none weight is largest, then that input's best
  non-none op; ties go to the earlier input / op.
  """
  a = np.asarray(alphas["recurrent"], np.float64)
  probs = np.exp(a - a.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  usable = [k for k, p in enumerate(primitives) if p != "none"]
  recurrent, start = [], 0
  for i in range(steps):
    w = probs[start:start + i + 1][:, usable]
    j = int(np.argmax(w.max(axis=1)))
    recurrent.append((primitives[usable[int(np.argmax(w[j]))]], j))
    start += i + 1
  return RNNGenotype(recurrent=recurrent, concat=list(range(1, steps + 1)))
