"""The discrete recurrent language model of a genotype (paper sec. 3.2, A.2.2, A.2.4).

One layer of the derived cell (`cell.discrete_cell`, no normalisation),
embedding tied to the softmax, locked dropout as in the search. Used by
`jdarts train` for configs with `trainer='lm'` (`jdarts.lm_train_loop`) and by
`jdarts summary`, which counts the weights as the reference does
(`sum(p.nelement() for p in model.parameters())`: the tied matrix once).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp

from jdarts.config_lib import ConfigError
from jdarts.spaces.darts_rnn import cell as cell_lib
from jdarts.spaces.darts_rnn.genotypes import RNN_GENOTYPES, RNNGenotype
from jdarts.spaces.darts_rnn.space import DEFAULTS, lm_loss, rates_of, validate_lm_config


def load_genotype(spec: str) -> RNNGenotype:
  """A published cell by name (ENAS, DARTS_V1, DARTS_V2, DARTS) or a search's genotype.json.

  Raises:
    ConfigError: neither a known name nor a readable recurrent genotype file.
  """
  if spec in RNN_GENOTYPES:
    return RNN_GENOTYPES[spec]
  if isinstance(spec, str) and os.path.isfile(spec):
    try:
      with open(spec) as f:
        d = json.load(f)
      return RNNGenotype([(str(op), int(i)) for op, i in d["recurrent"]],
                         [int(i) for i in d["concat"]])
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(f"genotype={spec!r} is not a recurrent genotype.json "
                        f"({type(e).__name__}: {e}).") from None
  raise ConfigError(f"genotype={spec!r} is neither a published recurrent cell "
                    f"({', '.join(RNN_GENOTYPES)}) nor a genotype.json file.")


def check_genotype(g: RNNGenotype) -> None:
  """ConfigError if an entry names an unknown activation or a later node."""
  for i, (op, pred) in enumerate(g.recurrent):
    if op not in cell_lib.ACTIVATIONS or not 0 <= pred <= i:
      raise ConfigError(f"genotype: node {i + 1} = {op}({pred}) needs an activation of "
                        f"{tuple(cell_lib.ACTIVATIONS)} on a node in 0..{i}.")
  if not g.concat or any(not 1 <= c <= len(g.recurrent) for c in g.concat):
    raise ConfigError(f"genotype: concat {list(g.concat)} must name nodes in "
                      f"1..{len(g.recurrent)}.")


class RNNNetwork:
  """A genotype's one-cell language model: `init`, `loss`, `init_carry`, `count_params`."""

  def __init__(self, genotype: RNNGenotype, vocab_size: int, model_cfg: Mapping[str, Any]):
    validate_lm_config(dict(model_cfg))
    check_genotype(genotype)
    cfg = {**DEFAULTS, **model_cfg}
    self.genotype, self.vocab_size, self.hidden = genotype, int(vocab_size), cfg["hidden"]
    self.rates, self.tar_beta = rates_of(cfg), float(cfg["tar_beta"])
    self.time_loop, self.dtype = cfg["time_loop"], jnp.dtype(cfg["dtype"])

  def init(self, rng) -> Dict[str, jnp.ndarray]:
    return cell_lib.init_params(rng, self.vocab_size, self.hidden,
                                len(self.genotype.recurrent), self.dtype)

  def init_carry(self, batch_size: int) -> jnp.ndarray:
    return jnp.zeros((batch_size, self.hidden), self.dtype)

  def loss(self, params, batch, rng, carry, valid=None):
    """(loss, aux, new carry) as `space.lm_loss`; 'deterministic' in batch: no dropout."""
    cell = lambda x, h, masks: cell_lib.discrete_cell(params["w0"], params["ws"],
                                                      self.genotype, x, h, masks)
    return lm_loss(params, batch, rng, carry, cell, rates=self.rates, vocab=self.vocab_size,
                   hidden=self.hidden, tar_beta=self.tar_beta, time_loop=self.time_loop,
                   dtype=self.dtype, valid=valid)

  def count_params(self) -> int:
    """Weights as the reference counts them: the tied embedding/softmax matrix once."""
    shapes = jax.eval_shape(self.init, jax.random.PRNGKey(0))
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(shapes))
