"""The DARTS recurrent search space (paper sec. 2.1, 3.1.2, A.1.2), for language models.

* `cell`: the mixed (search) and discrete recurrent cells, locked dropout and
  the one-cell language model around them, in plain JAX;
* `space`: `DartsRNNSpace`, registered as 'darts_rnn' in `jdarts.spaces.SPACES`,
  and the k=1 derivation;
* `genotypes`: the recurrent genotype type and the published cells
  (ENAS, DARTS_V1, DARTS_V2).
"""
from jdarts.spaces.darts_rnn import cell  # noqa: F401
from jdarts.spaces.darts_rnn import genotypes  # noqa: F401
from jdarts.spaces.darts_rnn.space import DartsRNNSpace, derive  # noqa: F401
