"""Discrete DARTS recurrent cells (paper sec. 2.1, A.1.2): the type and the published cells.

A recurrent genotype is one cell: node 0 combines x_t and h_{t-1}; each later
node applies one activation to one earlier node; h_t is the average of the
`concat` nodes. The published cells are reproduced entry for entry from the
reference implementation (quark0/darts `rnn/genotypes.py`), where `concat` is
written as `range`.

The module itself is plain Python (no numpy, JAX or Flax).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

# Candidate operations of the DARTS recurrent cell (reference rnn/genotypes.py).
RNN_PRIMITIVES: Tuple[str, ...] = ('none', 'tanh', 'relu', 'sigmoid', 'identity')

Entry = Tuple[str, int]


class RNNGenotype(NamedTuple):
  """A discrete recurrent cell (paper sec. 2.1, A.1.2).

  Attributes:
    recurrent: one `(activation, input_index)` pair per intermediate node;
      node 0 is the combination of x_t and h_{t-1}, entry `i` is node `i + 1`.
    concat: node indices averaged into h_t.
  """
  recurrent: List[Entry]
  concat: List[int]


# Published recurrent cells, from quark0/darts rnn/genotypes.py
# (`concat=range(1, 9)` there).
RNN_ENAS = RNNGenotype(
  recurrent=[
    ('tanh', 0), ('tanh', 1), ('relu', 1), ('tanh', 3), ('tanh', 3),
    ('relu', 3), ('relu', 4), ('relu', 7), ('relu', 8), ('relu', 8),
    ('relu', 8),
  ],
  concat=[2, 5, 6, 9, 10, 11],
)

RNN_DARTS_V1 = RNNGenotype(
  recurrent=[
    ('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3),
    ('relu', 4), ('identity', 1), ('relu', 5), ('relu', 1),
  ],
  concat=[1, 2, 3, 4, 5, 6, 7, 8],
)

RNN_DARTS_V2 = RNNGenotype(
  recurrent=[
    ('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1),
    ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5),
  ],
  concat=[1, 2, 3, 4, 5, 6, 7, 8],
)

RNN_DARTS = RNN_DARTS_V2

RNN_GENOTYPES: Dict[str, RNNGenotype] = {
  'ENAS': RNN_ENAS,
  'DARTS_V1': RNN_DARTS_V1,
  'DARTS_V2': RNN_DARTS_V2,
  'DARTS': RNN_DARTS,
}


def format_genotype(genotype: RNNGenotype) -> str:
  """One line for logs, e.g. `recurrent: 1<-sigmoid(0) 2<-relu(1) ... concat=[1, ..., 8]`."""
  nodes = ' '.join(f'{i + 1}<-{op}({idx})' for i, (op, idx) in enumerate(genotype.recurrent))
  return f"recurrent: {nodes} concat={list(genotype.concat)}"


__all__ = ['RNN_PRIMITIVES', 'RNNGenotype', 'RNN_ENAS', 'RNN_DARTS_V1', 'RNN_DARTS_V2',
           'RNN_DARTS', 'RNN_GENOTYPES', 'format_genotype']
