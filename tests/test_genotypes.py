"""Tests for jdarts.genotypes: published cells, validation, JSON, random genotypes.

Derivation from alphas is the DARTS CNN space's (tests/test_derive.py); the
recurrent cells live in jdarts.spaces.darts_rnn.genotypes.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jdarts import genotypes
from jdarts.genotypes import (DARTS, DARTS_V1, DARTS_V2, GENOTYPES, PRIMITIVES,
                              AmoebaNet, Genotype, NASNet, format_genotype,
                              genotype_from_json, genotype_to_json, load_genotype,
                              register_genotype, save_genotype)
from jdarts.spaces.darts_cnn.derive import derive
from jdarts.spaces.darts_rnn import genotypes as rnn_genotypes
# Registers the sharpDARTS cells in GENOTYPES (as any run using jdarts.models
# does); their operations are the sharp namespace's.
from jdarts.spaces.sharp import primitives as sharp_primitives

ALL_OPS = genotypes.KNOWN_OPS + tuple(sharp_primitives.OPS.names())


# ---------------------------------------------------------------------------
# Published genotypes
# ---------------------------------------------------------------------------

def test_published_genotypes_match_reference():
  assert PRIMITIVES == ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
                        'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
  # quark0/darts cnn/genotypes.py:
  #   DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
  #     ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1),
  #     ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
  #     normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0),
  #     ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ...],
  #     reduce_concat=[2, 3, 4, 5])
  #   DARTS_V1 = Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ...
  #   DARTS = DARTS_V2
  assert len(DARTS_V2.normal) == 8 and len(DARTS_V2.reduce) == 8
  assert DARTS_V2.normal_concat == [2, 3, 4, 5] == DARTS_V2.reduce_concat
  assert DARTS_V2.normal[:3] == [('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
                                 ('sep_conv_3x3', 0)]
  assert DARTS_V2.normal[-1] == ('dil_conv_3x3', 2)
  assert DARTS_V2.reduce[:4] == [('max_pool_3x3', 0), ('max_pool_3x3', 1),
                                 ('skip_connect', 2), ('max_pool_3x3', 1)]
  # The reference lists the stronger edge first, not the lower index.
  assert DARTS_V1.normal[:2] == [('sep_conv_3x3', 1), ('sep_conv_3x3', 0)]
  assert DARTS_V1.reduce[-1] == ('avg_pool_3x3', 0)
  assert DARTS is DARTS_V2 and GENOTYPES['DARTS'] is DARTS_V2
  # NASNet: 5 nodes, reduce_concat [4, 5, 6]; AmoebaNet ends ('sep_conv_3x3', 5).
  assert len(NASNet.normal) == 10 and NASNet.normal_concat == [2, 3, 4, 5, 6]
  assert NASNet.reduce_concat == [4, 5, 6] and NASNet.reduce[1] == ('sep_conv_7x7', 0)
  assert AmoebaNet.reduce[-2:] == [('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)]
  assert AmoebaNet.normal_concat == [4, 5, 6] and AmoebaNet.reduce_concat == [3, 4, 6]
  # quark0/darts rnn/genotypes.py: DARTS_V2 = Genotype(recurrent=[('sigmoid', 0),
  #   ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5),
  #   ('tanh', 3), ('relu', 5)], concat=range(1, 9))
  rnn = rnn_genotypes.RNN_GENOTYPES
  assert rnn['DARTS_V2'].recurrent[:2] == [('sigmoid', 0), ('relu', 1)]
  assert rnn['DARTS_V2'].concat == list(range(1, 9))
  assert rnn['DARTS_V1'].recurrent[5] == ('identity', 1)
  assert rnn['DARTS'] is rnn['DARTS_V2']


def test_published_genotypes_are_valid():
  for name, g in GENOTYPES.items():
    assert genotypes.validate_genotype(g, known_ops=ALL_OPS) == g, name
  # The extra operations are accepted only because KNOWN_OPS lists them.
  with pytest.raises(ValueError, match="unknown operation 'sep_conv_7x7'"):
    genotypes.validate_genotype(NASNet, known_ops=PRIMITIVES)


# ---------------------------------------------------------------------------
# JSON, files, registry
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(GENOTYPES))
def test_json_round_trip(name, tmp_path):
  g = GENOTYPES[name]
  d = json.loads(json.dumps(genotype_to_json(g)))
  assert set(d) == {'normal', 'normal_concat', 'reduce', 'reduce_concat'}
  assert d['normal'][0] == list(g.normal[0])
  assert genotype_from_json(d, known_ops=ALL_OPS) == g
  path = save_genotype(g, tmp_path / 'g.json')
  assert load_genotype(path, known_ops=ALL_OPS) == g


def test_load_by_name_file_and_directory(tmp_path):
  g = load_genotype('DARTS_V2')
  assert g == DARTS_V2
  g.normal.append(('skip_connect', 0))  # a copy: the registry is untouched
  assert len(DARTS_V2.normal) == 8

  derived = derive(np.random.default_rng(0).standard_normal((14, 8)), np.zeros((14, 8)))
  file_path = tmp_path / 'cell.json'
  assert save_genotype(derived, file_path) == str(file_path)
  assert load_genotype(file_path) == derived
  assert load_genotype(str(file_path)) == derived

  workdir = tmp_path / 'search'
  workdir.mkdir()
  save_genotype(derived, workdir)
  assert os.listdir(workdir) == ['genotype.json']
  assert load_genotype(workdir) == derived


def _write(tmp_path, d):
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(d))
  return path


def _one_line_error(fn, match):
  with pytest.raises(ValueError, match=match) as info:
    fn()
  assert '\n' not in str(info.value)


def test_load_errors(tmp_path):
  _one_line_error(lambda: load_genotype('DARTS_V3'),
                  r"'DARTS_V3' is neither a known genotype nor a file.*Known genotypes: "
                  r".*DARTS_V2")
  _one_line_error(lambda: load_genotype(tmp_path),
                  r"has no genotype\.json")
  bad_json = tmp_path / 'broken.json'
  bad_json.write_text('{"normal": [')
  _one_line_error(lambda: load_genotype(bad_json), 'not valid JSON')

  good = genotype_to_json(DARTS_V2)
  d = dict(good, normal=[list(e) for e in good['normal']])
  d['normal'][3] = ['sep_conv_9x9', 1]
  _one_line_error(lambda: load_genotype(_write(tmp_path, d)),
                  r"bad\.json: normal\[3\] has unknown operation 'sep_conv_9x9'")

  d = dict(good, reduce=[list(e) for e in good['reduce']])
  d['reduce'][2] = ['skip_connect', 3]  # entry 2 is node 3: inputs 0..2 only
  _one_line_error(lambda: load_genotype(_write(tmp_path, d)),
                  r"reduce\[2\] .* has input 3; node 3 can only read nodes 0\.\.2")
  d['reduce'][2] = ['skip_connect', -1]
  _one_line_error(lambda: load_genotype(_write(tmp_path, d)), r"has input -1")
  d['reduce'][2] = ['skip_connect', True]
  _one_line_error(lambda: load_genotype(_write(tmp_path, d)), r"has input True")

  d = dict(good, normal_concat=[2, 3, 4, 6])
  _one_line_error(lambda: load_genotype(_write(tmp_path, d)),
                  r"normal_concat = \[2, 3, 4, 6\] contains 6; this cell has nodes 0\.\.5")
  d = dict(good, normal=good['normal'][:7])
  _one_line_error(lambda: load_genotype(_write(tmp_path, d)), 'positive, even number')

  d = {k: v for k, v in good.items() if k != 'reduce_concat'}
  d['normal_concats'] = [2, 3, 4, 5]
  _one_line_error(lambda: load_genotype(_write(tmp_path, d)),
                  r"missing key\(s\) \['reduce_concat'\] and unknown key\(s\) "
                  r"\['normal_concats'\]")
  _one_line_error(lambda: genotype_from_json(dict(good, comment='x')),
                  r"unknown key\(s\) \['comment'\]")
  _one_line_error(lambda: genotype_from_json([1, 2]), 'must be a JSON object')


def test_custom_ops_need_known_ops(tmp_path):
  g = derive(np.zeros((14, 3)), np.zeros((14, 3)), ('none', 'my_op', 'skip_connect'))
  path = save_genotype(g, tmp_path / 'g.json')
  with pytest.raises(ValueError, match="unknown operation 'my_op'"):
    load_genotype(path)
  assert load_genotype(path, known_ops=['my_op']) == g


def test_register_genotype(monkeypatch):
  monkeypatch.setattr(genotypes, 'GENOTYPES', dict(GENOTYPES))
  mine = Genotype(DARTS_V1.normal, range(2, 6), DARTS_V1.reduce, range(2, 6))
  stored = register_genotype('mine', mine)
  assert stored.normal_concat == [2, 3, 4, 5]  # reference-style range normalised
  assert load_genotype('mine') == stored
  with pytest.raises(ValueError, match="'mine' is already registered"):
    register_genotype('mine', DARTS_V2)
  register_genotype('mine', DARTS_V2, overwrite=True)
  assert load_genotype('mine') == DARTS_V2
  with pytest.raises(ValueError, match=r"genotype 'broken': normal\[1\]"):
    register_genotype('broken', Genotype([('sep_conv_3x3', 0), ('conv', 1)], [2],
                                         [('skip_connect', 0), ('skip_connect', 1)], [2]))
  assert 'broken' not in genotypes.GENOTYPES


def test_format_genotype():
  text = format_genotype(DARTS_V2)
  lines = text.splitlines()
  assert len(lines) == 2
  assert lines[0].startswith('normal: 2<-sep_conv_3x3(0),sep_conv_3x3(1) ')
  assert lines[0].endswith('5<-skip_connect(0),dil_conv_3x3(2) concat=[2, 3, 4, 5]')
  assert lines[1].startswith('reduce: 2<-max_pool_3x3(0),max_pool_3x3(1) ')
  rnn = rnn_genotypes.format_genotype(rnn_genotypes.RNN_DARTS_V2)
  assert rnn.startswith('recurrent: 1<-sigmoid(0) 2<-relu(1)') and '\n' not in rnn


def test_module_imports_without_jax_or_flax():
  code = ("import sys, jdarts.genotypes; "
          "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)")
  subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


# ---------------------------------------------------------------------------
# Random genotypes: the baseline of the quickstart evaluation.
# ---------------------------------------------------------------------------

def test_random_genotype_structure_and_determinism():
  g = genotypes.random_genotype(0)
  assert g == load_genotype('random:0') == genotypes.random_genotype(0)
  assert genotypes.random_genotype(1) != g
  # Same shape as a derived genotype of the DARTS space.
  like = derive(np.zeros((14, 8)), np.zeros((14, 8)))
  assert (len(g.normal), g.normal_concat, len(g.reduce), g.reduce_concat) == (
      len(like.normal), like.normal_concat, len(like.reduce), like.reduce_concat)
  for seed in range(50):
    g = genotypes.random_genotype(seed)
    for cell in (g.normal, g.reduce):
      for node in range(4):
        (op_a, a), (op_b, b) = cell[2 * node:2 * node + 2]
        assert 0 <= a < b < node + 2  # two distinct earlier nodes
        assert op_a != 'none' and op_b != 'none' and op_a in PRIMITIVES
  small = genotypes.random_genotype(3, ('none', 'skip_connect'), steps=2, multiplier=1)
  assert small.normal_concat == [3] and {op for op, _ in small.normal} == {'skip_connect'}
  _one_line_error(lambda: load_genotype('random:x'), "'random:SEED'")
  _one_line_error(lambda: genotypes.random_genotype(0, ('none',)), "besides 'none'")


def test_random_genotype_is_uniform():
  """Input pairs uniform over the C(n, 2) pairs of each node, ops over the 7 non-'none'.

  Frequencies over 3000 draws (x 2 cells) against 1/C(n, 2) and 1/7, with a
  5-sigma binomial tolerance.
  """
  n = 3000
  pairs = [dict() for _ in range(4)]
  ops = {}
  for seed in range(n):
    g = genotypes.random_genotype(seed)
    for cell in (g.normal, g.reduce):
      for node in range(4):
        key = (cell[2 * node][1], cell[2 * node + 1][1])
        pairs[node][key] = pairs[node].get(key, 0) + 1
      for op, _ in cell:
        ops[op] = ops.get(op, 0) + 1

  def check(counts, k, total):
    assert len(counts) == k
    p = 1.0 / k
    tol = 5 * math.sqrt(p * (1 - p) / total)
    for c in counts.values():
      assert abs(c / total - p) <= tol, (counts, k)
  for node in range(4):
    check(pairs[node], math.comb(node + 2, 2), 2 * n)
  check(ops, 7, 2 * n * 8)
