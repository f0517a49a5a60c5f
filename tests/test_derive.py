"""Derivation of a DARTS CNN genotype from alphas (jdarts.spaces.darts_cnn.derive, sec. 2.4).

References: an independent, deliberately slow re-implementation of the
reference's `genotype()` (quark0/darts cnn/model_search.py `_parse`), alphas
made by hand whose derivation is worked out in the comments, and, for the
sigmoid (Single-DARTS) and Max-W (sharpDARTS) mixings, edge strengths
computed by hand.
"""
import json
import math

import numpy as np
import pytest

from jdarts import spaces
from jdarts.genotypes import PRIMITIVES, Genotype, genotype_to_json
from jdarts.spaces.darts_cnn.derive import derive
import helpers

P = {name: k for k, name in enumerate(PRIMITIVES)}


def edge(steps_before, src):
  """Row of the alphas for the edge src -> node (steps_before + 2)."""
  return sum(2 + i for i in range(steps_before)) + src


# ---------------------------------------------------------------------------
# An independent, deliberately slow derivation: python loops, math.exp,
# the semantics of quark0/darts cnn/model_search.py `_parse`.
# ---------------------------------------------------------------------------

def slow_derive(alphas_normal, alphas_reduce, primitives, steps, multiplier):
  none = primitives.index('none')

  def strengths(row):
    m = max(row)
    exps = [math.exp(v - m) for v in row]
    total = sum(exps)
    return [e / total for e in exps]

  def parse(w):
    gene, start = [], 0
    for i in range(steps):
      n = i + 2
      rows = [strengths([float(v) for v in w[start + j]]) for j in range(n)]
      score = [max(r[o] for o in range(len(primitives)) if o != none) for r in rows]
      # python's sort is stable: equal scores keep the lower predecessor first.
      kept = sorted(range(n), key=lambda j: -score[j])[:2]
      for j in kept:
        best = None
        for o in range(len(primitives)):
          if o != none and (best is None or rows[j][o] > rows[j][best]):
            best = o
        gene.append((primitives[best], j))
      start += n
    return gene

  concat = list(range(2 + steps - multiplier, steps + 2))
  return Genotype(parse(alphas_normal), concat, parse(alphas_reduce), concat)


# ---------------------------------------------------------------------------
# derive with softmax (DARTS)
# ---------------------------------------------------------------------------

def test_derive_hand_made_alphas():
  a = np.full((14, 8), -5.0)
  # node 2: the edge from node 1 is stronger, so it is listed first.
  a[edge(0, 1), P['sep_conv_3x3']] = 5.0
  a[edge(0, 0), P['skip_connect']] = 3.0
  # node 3: 'none' dominates the edge from node 0, which therefore loses.
  a[edge(1, 0), P['none']] = 10.0
  a[edge(1, 1), P['dil_conv_3x3']] = 4.0
  a[edge(1, 2), P['avg_pool_3x3']] = 6.0
  # node 4: from node 3 strongest, then node 0; node 1 uniform, node 2 'none'.
  a[edge(2, 0), P['sep_conv_5x5']] = 2.0
  a[edge(2, 2), P['none']] = 8.0
  a[edge(2, 3), P['max_pool_3x3']] = 7.0
  # node 5: only the edges from nodes 3 and 4 carry a non-'none' operation.
  for src in range(3):
    a[edge(3, src), P['none']] = 9.0
  a[edge(3, 3), P['dil_conv_5x5']] = 5.0
  a[edge(3, 4), P['skip_connect']] = 4.0

  g = derive(a, np.zeros((14, 8)))
  assert g.normal == [
    ('sep_conv_3x3', 1), ('skip_connect', 0),
    ('avg_pool_3x3', 2), ('dil_conv_3x3', 1),
    ('max_pool_3x3', 3), ('sep_conv_5x5', 0),
    ('dil_conv_5x5', 3), ('skip_connect', 4),
  ]
  # All-equal alphas: every tie goes to the lower predecessor and to the first
  # non-'none' primitive, as with the reference's stable sort and strict '>'.
  assert g.reduce == [('max_pool_3x3', 0), ('max_pool_3x3', 1)] * 4
  assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [2, 3, 4, 5]


def test_derive_ties_break_like_the_reference():
  a = np.zeros((14, 8))
  # node 3: the edge from node 0 is weaker; nodes 1 and 2 tie exactly.
  a[edge(1, 0), P['none']] = 5.0
  # node 2: two operations tie on the edge from node 1; the earlier one wins.
  a[edge(0, 1), [P['dil_conv_3x3'], P['sep_conv_3x3']]] = 1.0
  a[edge(0, 0), P['skip_connect']] = 0.5
  g = derive(a, a)
  assert g.normal[:4] == [('sep_conv_3x3', 1), ('skip_connect', 0),
                          ('max_pool_3x3', 1), ('max_pool_3x3', 2)]


def test_derive_concat_and_other_cell_sizes():
  g = derive(np.zeros((14, 8)), np.zeros((14, 8)), multiplier=3)
  assert g.normal_concat == [3, 4, 5] and g.reduce_concat == [3, 4, 5]
  g = derive(np.zeros((5, 8)), np.zeros((5, 8)), steps=2, multiplier=2)
  assert len(g.normal) == 4 and g.normal_concat == [2, 3]
  g = derive(np.zeros((14, 8)), np.zeros((14, 8)), k=1)
  assert g.normal == [('max_pool_3x3', 0)] * 4


@pytest.mark.parametrize('seed,scale', [(0, 1e-3), (1, 1e-3), (2, 0.3), (3, 1.0),
                                        (4, 3.0), (5, 10.0)])
def test_derive_matches_slow_implementation(seed, scale):
  rng = np.random.default_rng(seed)
  an = scale * rng.standard_normal((14, 8))
  ar = scale * rng.standard_normal((14, 8))
  assert derive(an, ar) == slow_derive(an, ar, list(PRIMITIVES), 4, 4)
  # A different primitive set and cell size, with 'none' not in first place.
  prims = ['skip_connect', 'none', 'sep_conv_3x3', 'max_pool_3x3']
  an = scale * rng.standard_normal((9, 4))
  ar = scale * rng.standard_normal((9, 4))
  assert (derive(an, ar, prims, steps=3, multiplier=2) ==
          slow_derive(an, ar, prims, 3, 2))


def test_none_is_never_selected_even_when_dominant():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((14, 8))
  a[:, P['none']] = 20.0
  g = derive(a, a)
  assert all(op != 'none' for op, _ in g.normal + g.reduce)

  # Ranking ignores the strength of 'none': the uniform edge from node 1 (0.125)
  # beats edges whose non-'none' ops are crushed by a dominant 'none'.
  b = np.zeros((14, 8))
  b[edge(1, 0), P['none']] = 20.0
  b[edge(1, 0), P['sep_conv_3x3']] = 3.0
  b[edge(1, 2), P['none']] = 20.0
  b[edge(1, 2), P['skip_connect']] = 1.0
  g = derive(b, b)
  assert g.normal[2:4] == [('max_pool_3x3', 1), ('sep_conv_3x3', 0)]


def test_softmax_strength_not_raw_alpha_ranks_edges():
  a = np.zeros((14, 8))
  # node 3, edge from 0: largest raw alpha (6) but its neighbours are large too,
  # so its strength is e / (e + 7) ~ 0.28.
  a[edge(1, 0), :] = 5.0
  a[edge(1, 0), P['sep_conv_3x3']] = 6.0
  # edge from 1: moderate alpha 2 with very negative others -> strength ~ 1.
  a[edge(1, 1), :] = -10.0
  a[edge(1, 1), P['sep_conv_5x5']] = 2.0
  # edge from 2: alpha 3 over zeros -> strength e^3 / (e^3 + 7) ~ 0.74.
  a[edge(1, 2), P['dil_conv_3x3']] = 3.0

  rows = a[edge(1, 0):edge(1, 0) + 3, 1:]
  raw_order = list(np.argsort(-rows.max(axis=1), kind='stable')[:2])
  assert raw_order == [0, 2]  # what ranking by raw alphas would keep
  g = derive(a, np.zeros((14, 8)))
  assert g.normal[2:4] == [('sep_conv_5x5', 1), ('dil_conv_3x3', 2)]


def test_derive_accepts_jax_arrays():
  import jax.numpy as jnp
  rng = np.random.default_rng(7)
  an, ar = rng.standard_normal((2, 14, 8)).astype(np.float32)
  expected = derive(an, ar)
  assert derive(jnp.asarray(an), jnp.asarray(ar)) == expected
  # Python ints, so the result serialises without numpy-aware encoders.
  json.dumps(genotype_to_json(expected))
  g = derive(jnp.asarray(an, jnp.bfloat16), jnp.asarray(ar, jnp.bfloat16))
  assert len(g.normal) == 8


def test_derive_validates_inputs():
  good = np.zeros((14, 8))
  with pytest.raises(ValueError, match=r"alphas_normal has shape \(13, 8\); the DARTS CNN "
                     r"cell with 4 steps needs \(14, 8\)"):
    derive(np.zeros((13, 8)), good)
  with pytest.raises(ValueError, match=r"alphas_reduce has shape \(14, 7\)"):
    derive(good, np.zeros((14, 7)))
  with pytest.raises(ValueError, match=r"needs \(5, 8\)"):
    derive(good, good, steps=2, multiplier=2)
  bad = good.copy()
  bad[3, 2] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    derive(bad, good)
  with pytest.raises(ValueError, match='multiplier'):
    derive(good, good, multiplier=5)
  with pytest.raises(ValueError, match='k must be'):
    derive(good, good, k=3)


# ---------------------------------------------------------------------------
# derive with the other mixings: ranked by the weights the supernet used
# ---------------------------------------------------------------------------

# steps=2 cells over (none, max_pool_3x3, sep_conv_3x3). Node 2 (rows 0, 1) is
# uniform. Node 3 reads node 0 (row 2), node 1 (row 3) and node 2 (row 4):
#   row 2 = log(.6, .4, 1e-9): softmax .4 (max_pool); sigmoid(log .4) = .4/1.4 = .286;
#           Max-W 1 - .6 + .4 = .8
#   row 3 = log(.35, .32, .33): softmax .33 (sep_conv); sigmoid .33/1.33 = .248;
#           Max-W 1 - .35 + .33 = .98
#   row 4 = (5, .5, 1): softmax e / (e^5 + e^.5 + e) = .018 (sep_conv);
#           sigmoid(1) = .731; Max-W 1 - .971 + .018 = .047
MIX_PRIMS = ("none", "max_pool_3x3", "sep_conv_3x3")
MIX_ALPHAS = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                       np.log([0.6, 0.4, 1e-9]), np.log([0.35, 0.32, 0.33]), [5.0, 0.5, 1.0]])
NODE2 = [("max_pool_3x3", 0), ("max_pool_3x3", 1)]  # all ties: lower index, first op
MIX_EXPECTED = {
    "softmax": NODE2 + [("max_pool_3x3", 0), ("sep_conv_3x3", 1)],  # .4 > .33 > .018
    "sigmoid": NODE2 + [("sep_conv_3x3", 2), ("max_pool_3x3", 0)],  # .731 > .286 > .248
    "max_w": NODE2 + [("sep_conv_3x3", 1), ("max_pool_3x3", 0)],    # .98 > .8 > .047
}


@pytest.mark.parametrize("mix", sorted(MIX_EXPECTED))
def test_derive_ranks_by_the_mixing(mix):
  """Three mixings keep three different edge pairs from the same alphas."""
  g = derive(MIX_ALPHAS, MIX_ALPHAS, MIX_PRIMS, steps=2, multiplier=2, mixing=mix)
  assert g.normal == MIX_EXPECTED[mix] and g.reduce == MIX_EXPECTED[mix]
  assert g.normal_concat == [2, 3]


@pytest.mark.parametrize("mix", ["sigmoid", "max_w"])
def test_space_derives_with_its_own_mixing(mix):
  space = spaces.get_space("darts_cnn", dict(helpers.tiny_model(), steps=2, multiplier=2,
                                             mixing=mix, primitives=MIX_PRIMS),
                           helpers.image_info())
  g = space.derive({"normal": MIX_ALPHAS, "reduce": np.zeros((5, 3))})
  assert g.normal == MIX_EXPECTED[mix]
  assert g.reduce == NODE2 + [("max_pool_3x3", 0), ("max_pool_3x3", 1)]


def test_max_w_ties_every_edge_led_by_a_real_operation():
  """Max-W gives strength 1 to an edge whose strongest op is not 'none':
  those edges tie and the lower predecessor wins, whatever softmax would say.

  Exactly 1 here: each edge's top weight m is >= 1/2, so 1 - m is exact
  (Sterbenz) and (1 - m) + m rounds to 1.
  """
  a = np.zeros((5, 3))
  a[2] = [0.0, 1.0, 0.0]   # node 3 from node 0: softmax .58
  a[3] = [0.0, 0.0, 9.0]   # from node 1: softmax ~1, the softmax winner
  a[4] = [0.0, 3.0, 0.0]   # from node 2: softmax .91
  soft = derive(a, a, MIX_PRIMS, steps=2, multiplier=2)
  assert soft.normal[2:] == [("sep_conv_3x3", 1), ("max_pool_3x3", 2)]
  g = derive(a, a, MIX_PRIMS, steps=2, multiplier=2, mixing="max_w")
  assert g.normal[2:] == [("max_pool_3x3", 0), ("sep_conv_3x3", 1)]


def test_unknown_mixing_names_the_known_ones():
  with pytest.raises(KeyError, match="'sigmoid'"):
    derive(MIX_ALPHAS, MIX_ALPHAS, MIX_PRIMS, steps=2, multiplier=2, mixing="sigmod")
