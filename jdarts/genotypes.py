"""Discrete architectures of DARTS-style cells (genotypes): the type, published cells, JSON.

A CNN genotype describes one normal and one reduction cell. Each cell has two
inputs (node 0 = output of the cell two back, node 1 = output of the previous
cell) and `steps` intermediate nodes numbered 2, 3, ...; every intermediate
node sums two operations, each applied to one earlier node. A cell is written
as a flat list of `(op_name, input_index)` pairs, two per intermediate node in
node order, plus the list of node indices concatenated into the cell output::

  Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...],
           normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])

Every space whose cells have this shape shares the type, validation, JSON
files and the registry of named genotypes here; each space derives its own
genotypes from its alphas (the DARTS CNN space: `jdarts.spaces.darts_cnn.derive`).
The published cells (NASNet, AmoebaNet, DARTS_V1, DARTS_V2) are reproduced
entry for entry from the reference implementation (quark0/darts
`cnn/genotypes.py`), since evaluation results depend on the exact order of
the entries. Recurrent genotypes live with their space
(`jdarts.spaces.darts_rnn.genotypes`).

This module depends on numpy only, so that tools which merely read, print or
convert genotypes do not pay for importing JAX or Flax; for the same reason
(and because imports point one way) it imports no search space.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

# The DARTS CNN space's candidate operations, by name. Order matters: it is the
# column order of the alphas and, as in the reference, decides ties between
# equally strong operations (the earlier one wins). The names live here, not
# with the space's operation registry (jdarts.spaces.darts_cnn.primitives,
# which re-exports them), because the published genotypes and 'random:SEED'
# need them without importing JAX, Flax or a search space.
PRIMITIVES: Tuple[str, ...] = (
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
)

# Operations that published (non-DARTS) cells use but the DARTS search space
# does not search over; a genotype may name them.
EXTRA_OPS: Tuple[str, ...] = ('sep_conv_7x7', 'conv_7x1_1x7')

# Operation names a genotype may contain unless the caller says otherwise.
KNOWN_OPS: Tuple[str, ...] = PRIMITIVES + EXTRA_OPS

_JSON_KEYS = ('normal', 'normal_concat', 'reduce', 'reduce_concat')
_JSON_FILENAME = 'genotype.json'

Entry = Tuple[str, int]


class Genotype(NamedTuple):
  """A discrete CNN architecture: one normal and one reduction cell.

  Attributes:
    normal: `2 * steps` pairs `(op_name, input_index)`; entries `2i` and `2i+1`
      form intermediate node `i + 2`, whose inputs are nodes `0 .. i + 1`.
    normal_concat: node indices concatenated (channel axis) into the output.
    reduce: as `normal`, for the reduction cell.
    reduce_concat: as `normal_concat`, for the reduction cell.
  """
  normal: List[Entry]
  normal_concat: List[int]
  reduce: List[Entry]
  reduce_concat: List[int]


# ---------------------------------------------------------------------------
# Published cells. Data copied entry for entry from quark0/darts
# cnn/genotypes.py; the reference writes some concats as `range`, here lists.
# ---------------------------------------------------------------------------

NASNet = Genotype(
  normal=[
    ('sep_conv_5x5', 1),
    ('sep_conv_3x3', 0),
    ('sep_conv_5x5', 0),
    ('sep_conv_3x3', 0),
    ('avg_pool_3x3', 1),
    ('skip_connect', 0),
    ('avg_pool_3x3', 0),
    ('avg_pool_3x3', 0),
    ('sep_conv_3x3', 1),
    ('skip_connect', 1),
  ],
  normal_concat=[2, 3, 4, 5, 6],
  reduce=[
    ('sep_conv_5x5', 1),
    ('sep_conv_7x7', 0),
    ('max_pool_3x3', 1),
    ('sep_conv_7x7', 0),
    ('avg_pool_3x3', 1),
    ('sep_conv_5x5', 0),
    ('skip_connect', 3),
    ('avg_pool_3x3', 2),
    ('sep_conv_3x3', 2),
    ('max_pool_3x3', 1),
  ],
  reduce_concat=[4, 5, 6],
)

AmoebaNet = Genotype(
  normal=[
    ('avg_pool_3x3', 0),
    ('max_pool_3x3', 1),
    ('sep_conv_3x3', 0),
    ('sep_conv_5x5', 2),
    ('sep_conv_3x3', 0),
    ('avg_pool_3x3', 3),
    ('sep_conv_3x3', 1),
    ('skip_connect', 1),
    ('skip_connect', 0),
    ('avg_pool_3x3', 1),
  ],
  normal_concat=[4, 5, 6],
  reduce=[
    ('avg_pool_3x3', 0),
    ('sep_conv_3x3', 1),
    ('max_pool_3x3', 0),
    ('sep_conv_7x7', 2),
    ('sep_conv_7x7', 0),
    ('avg_pool_3x3', 1),
    ('max_pool_3x3', 0),
    ('max_pool_3x3', 1),
    ('conv_7x1_1x7', 0),
    ('sep_conv_3x3', 5),
  ],
  reduce_concat=[3, 4, 6],
)

# First-order DARTS cell.
DARTS_V1 = Genotype(
  normal=[
    ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
    ('skip_connect', 0), ('sep_conv_3x3', 1),
    ('skip_connect', 0), ('sep_conv_3x3', 1),
    ('sep_conv_3x3', 0), ('skip_connect', 2),
  ],
  normal_concat=[2, 3, 4, 5],
  reduce=[
    ('max_pool_3x3', 0), ('max_pool_3x3', 1),
    ('skip_connect', 2), ('max_pool_3x3', 0),
    ('max_pool_3x3', 0), ('skip_connect', 2),
    ('skip_connect', 2), ('avg_pool_3x3', 0),
  ],
  reduce_concat=[2, 3, 4, 5],
)

# Second-order DARTS cell: the paper's best CIFAR-10 cell (Fig. 4 and 5).
DARTS_V2 = Genotype(
  normal=[
    ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
    ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
    ('sep_conv_3x3', 1), ('skip_connect', 0),
    ('skip_connect', 0), ('dil_conv_3x3', 2),
  ],
  normal_concat=[2, 3, 4, 5],
  reduce=[
    ('max_pool_3x3', 0), ('max_pool_3x3', 1),
    ('skip_connect', 2), ('max_pool_3x3', 1),
    ('max_pool_3x3', 0), ('skip_connect', 2),
    ('skip_connect', 2), ('max_pool_3x3', 1),
  ],
  reduce_concat=[2, 3, 4, 5],
)

DARTS = DARTS_V2

GENOTYPES: Dict[str, Genotype] = {
  'NASNet': NASNet,
  'AmoebaNet': AmoebaNet,
  'DARTS_V1': DARTS_V1,
  'DARTS_V2': DARTS_V2,
  'DARTS': DARTS,
}

# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------

def _is_int(x) -> bool:
  # bool is an int subclass, but `true` as a node index is a corrupt file.
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_cell(entries, concat, cell: str, known_ops: Optional[Sequence[str]],
                where: str) -> Tuple[List[Entry], List[int]]:
  """Validates one cell and returns it as fresh lists of python values."""
  if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
    raise ValueError(f"{where}{cell} must be a list of [op, input] pairs; "
                     f"got {type(entries).__name__}.")
  if not entries or len(entries) % 2:
    raise ValueError(f"{where}{cell} has {len(entries)} entries; a cell needs a "
                     "positive, even number (2 per intermediate node).")
  out = []
  for p, entry in enumerate(entries):
    if (isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or
        len(entry) != 2):
      raise ValueError(f"{where}{cell}[{p}] = {entry!r} is not an [op, input] pair.")
    op, idx = entry
    if not isinstance(op, str):
      raise ValueError(f"{where}{cell}[{p}] has op {op!r}; expected a string.")
    if known_ops is not None and op not in known_ops:
      close = difflib.get_close_matches(op, known_ops, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(f"{where}{cell}[{p}] has unknown operation {op!r}{hint}; "
                       f"known: {', '.join(known_ops)}.")
    # Entry p belongs to node p // 2 + 2, which may read nodes 0 .. p // 2 + 1.
    limit = p // 2 + 2
    if not _is_int(idx) or not 0 <= idx < limit:
      raise ValueError(f"{where}{cell}[{p}] = {entry!r} has input {idx!r}; node "
                       f"{limit} can only read nodes 0..{limit - 1}.")
    out.append((op, int(idx)))
  num_nodes = len(entries) // 2 + 2
  concat_name = f'{cell}_concat'
  if isinstance(concat, (str, bytes)) or not isinstance(concat, (Sequence, range)):
    raise ValueError(f"{where}{concat_name} must be a list of node indices; "
                     f"got {type(concat).__name__}.")
  concat = list(concat)
  if not concat:
    raise ValueError(f"{where}{concat_name} is empty; the cell would have no output.")
  for c in concat:
    if not _is_int(c) or not 0 <= c < num_nodes:
      raise ValueError(f"{where}{concat_name} = {concat!r} contains {c!r}; this "
                       f"cell has nodes 0..{num_nodes - 1}.")
  if len(set(concat)) != len(concat):
    raise ValueError(f"{where}{concat_name} = {concat!r} repeats a node.")
  return out, [int(c) for c in concat]


def validate_genotype(genotype: Genotype, *,
                      known_ops: Optional[Sequence[str]] = KNOWN_OPS,
                      where: str = '') -> Genotype:
  """Checks a CNN genotype and returns a normalised copy (lists, python ints).

  Args:
    genotype: a `Genotype` (or any 4-tuple in its field order); concats may be
      `range`s as in the reference code.
    known_ops: allowed operation names; `None` accepts any string.
    where: prefix for error messages, e.g. the file a genotype came from.

  Returns:
    A new `Genotype` that shares no lists with the argument.

  Raises:
    ValueError: one line naming the first problem found: an odd or empty cell,
      an unknown operation, an input that is not an earlier node, or a concat
      index outside the cell.
  """
  if isinstance(genotype, Mapping):
    raise ValueError(f"{where}got a dict; parse JSON genotypes with genotype_from_json.")
  if len(genotype) != 4:
    raise ValueError(f"{where}a Genotype has 4 fields ({', '.join(_JSON_KEYS)}); "
                     f"got {len(genotype)}.")
  normal, normal_concat, reduce, reduce_concat = genotype
  normal, normal_concat = _check_cell(normal, normal_concat, 'normal', known_ops, where)
  reduce, reduce_concat = _check_cell(reduce, reduce_concat, 'reduce', known_ops, where)
  return Genotype(normal, normal_concat, reduce, reduce_concat)


def register_genotype(name: str, genotype: Genotype, *,
                      known_ops: Optional[Sequence[str]] = KNOWN_OPS,
                      overwrite: bool = False) -> Genotype:
  """Adds `genotype` to `GENOTYPES` so configs and `load_genotype` find it by name.

  Args:
    name: registry key.
    genotype: the cell pair; validated as by `validate_genotype`.
    known_ops: allowed operation names (`None`: any).
    overwrite: replace an existing entry instead of raising.

  Returns:
    The validated, normalised genotype that was stored.

  Raises:
    ValueError: if `name` is taken (and not `overwrite`) or the genotype is invalid.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"genotype name must be a non-empty string; got {name!r}.")
  if name in GENOTYPES and not overwrite:
    raise ValueError(f"genotype {name!r} is already registered; pass overwrite=True "
                     "to replace it.")
  genotype = validate_genotype(genotype, known_ops=known_ops,
                               where=f"genotype {name!r}: ")
  GENOTYPES[name] = genotype
  return genotype


# ---------------------------------------------------------------------------
# Random architectures of the same space (the baseline a search must beat).
# ---------------------------------------------------------------------------

RANDOM_PREFIX = 'random:'


def check_cell_size(steps, multiplier) -> None:
  """Raises ValueError unless steps >= 1 and 1 <= multiplier <= steps (python ints)."""
  if not _is_int(steps) or steps < 1:
    raise ValueError(f"steps must be a positive integer; got {steps!r}.")
  if not _is_int(multiplier) or not 1 <= multiplier <= steps:
    raise ValueError(f"multiplier must be in 1..steps={steps}; got {multiplier!r}.")


def random_genotype(seed: int, primitives: Sequence[str] = PRIMITIVES, *, steps: int = 4,
                    multiplier: int = 4) -> Genotype:
  """A genotype drawn uniformly from the cells a DARTS derivation can return.

  The same structure as a derived genotype (paper sec. 2.4): every
  intermediate node reads two distinct earlier nodes, an unordered pair drawn
  uniformly (node i + 2 has i + 2 predecessors), each through an operation
  drawn uniformly and independently from the non-'none' primitives; the
  normal and reduction cells are drawn independently; the concat is the last
  `multiplier` nodes. Entries of a node are in increasing input order.

  Args:
    seed: non-negative int; the genotype is a function of (seed, primitives,
      steps, multiplier) only (numpy's PCG64).
    primitives: the search space's operations ('none' is never drawn).
    steps: intermediate nodes per cell.
    multiplier: how many of the last nodes form the cell output.

  Returns:
    A validated `Genotype` with `2 * steps` entries per cell.

  Raises:
    ValueError: a negative seed, no primitive besides 'none', or steps /
      multiplier out of range.
  """
  if not _is_int(seed) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
  check_cell_size(steps, multiplier)
  ops = [p for p in primitives if p != 'none']
  if not ops:
    raise ValueError(f"primitives {tuple(primitives)!r} have no operation besides 'none'.")
  rng = np.random.default_rng(int(seed))

  def cell():
    gene = []
    for i in range(steps):
      inputs = np.sort(rng.choice(i + 2, size=2, replace=False))
      names = rng.integers(0, len(ops), size=2)
      gene += [(ops[n], int(j)) for n, j in zip(names, inputs)]
    return gene
  normal = cell()
  reduce = cell()
  concat = list(range(2 + steps - multiplier, steps + 2))
  return validate_genotype(Genotype(normal, concat, reduce, list(concat)), known_ops=None)


def parse_random_spec(spec: str) -> Optional[int]:
  """The seed of a 'random:SEED' genotype name, or None for any other name.

  Raises:
    ValueError: 'random:' followed by something that is not a non-negative int.
  """
  if not isinstance(spec, str) or not spec.startswith(RANDOM_PREFIX):
    return None
  text = spec[len(RANDOM_PREFIX):]
  if not text.isdigit():
    raise ValueError(f"{spec!r}: a random genotype is 'random:SEED' with SEED a "
                     "non-negative integer, e.g. 'random:0'.")
  return int(text)


# ---------------------------------------------------------------------------
# JSON and files.
# ---------------------------------------------------------------------------

def genotype_to_json(genotype: Genotype) -> Dict[str, Any]:
  """The JSON-ready dict of a genotype.

  Returns:
    `{"normal": [[op, input], ...], "normal_concat": [...], "reduce": [...],
    "reduce_concat": [...]}` with python strings and ints only.
  """
  g = validate_genotype(genotype, known_ops=None)
  return {
    'normal': [[op, idx] for op, idx in g.normal],
    'normal_concat': list(g.normal_concat),
    'reduce': [[op, idx] for op, idx in g.reduce],
    'reduce_concat': list(g.reduce_concat),
  }


def genotype_from_json(d: Mapping[str, Any], *,
                       known_ops: Optional[Sequence[str]] = KNOWN_OPS,
                       where: str = '') -> Genotype:
  """Parses and validates the dict written by `genotype_to_json`.

  Args:
    d: mapping with exactly the keys normal, normal_concat, reduce, reduce_concat.
    known_ops: allowed operation names (`None`: any). Genotypes searched over
      custom operations need their names here, e.g.
      `jdarts.spaces.darts_cnn.primitives.OPS.names()`.
    where: prefix for error messages.

  Raises:
    ValueError: one line naming the first problem (keys, op, index, concat).
  """
  if not isinstance(d, Mapping):
    raise ValueError(f"{where}a genotype must be a JSON object with keys "
                     f"{', '.join(_JSON_KEYS)}; got {type(d).__name__}.")
  missing = [key for key in _JSON_KEYS if key not in d]
  unknown = sorted(str(key) for key in d if key not in _JSON_KEYS)
  if missing or unknown:
    parts = ([f"missing key(s) {missing}"] if missing else []) + (
        [f"unknown key(s) {unknown}"] if unknown else [])
    raise ValueError(f"{where}genotype has {' and '.join(parts)}; expected exactly "
                     f"{', '.join(_JSON_KEYS)}.")
  return validate_genotype(tuple(d[key] for key in _JSON_KEYS), known_ops=known_ops,
                           where=where)


def save_genotype(genotype: Genotype, path: Union[str, os.PathLike]) -> str:
  """Writes `genotype` as JSON to `path` (or `path/genotype.json` for a directory).

  The file is written next to its destination and renamed over it, so a
  concurrent reader (e.g. an evaluation job polling a search workdir) never
  sees half a file.

  Returns:
    The path of the written file.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, _JSON_FILENAME)
  text = json.dumps(genotype_to_json(genotype), indent=1)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, 'w') as f:
    f.write(text + '\n')
  os.replace(tmp, path)
  return path


def load_genotype(name_or_path: Union[str, os.PathLike], *,
                  known_ops: Optional[Sequence[str]] = KNOWN_OPS) -> Genotype:
  """A genotype by registered name, JSON file, or search workdir.

  Args:
    name_or_path: a key of `GENOTYPES` (e.g. 'DARTS_V2'), 'random:SEED' (a
      `random_genotype` of the DARTS space), a JSON file written by
      `save_genotype`, or a directory containing `genotype.json`.
    known_ops: allowed operation names for files (`None`: any).

  Returns:
    A fresh `Genotype` (mutating it does not touch the registry).

  Raises:
    ValueError: for an unknown name that is not a file (listing the known
      names), a malformed 'random:SEED', a directory without genotype.json, unreadable JSON, or an
      invalid genotype.
  """
  if isinstance(name_or_path, str) and name_or_path in GENOTYPES:
    return validate_genotype(GENOTYPES[name_or_path], known_ops=None)
  seed = parse_random_spec(name_or_path)
  if seed is not None:
    return random_genotype(seed)
  path = os.fspath(name_or_path)
  if os.path.isdir(path):
    dir_path, path = path, os.path.join(path, _JSON_FILENAME)
    if not os.path.isfile(path):
      raise ValueError(f"directory {dir_path!r} has no {_JSON_FILENAME}; is it a "
                       "finished search workdir?")
  elif not os.path.isfile(path):
    close = difflib.get_close_matches(path, GENOTYPES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{path!r} is neither a known genotype nor a file.{hint} Known "
                     f"genotypes: {', '.join(GENOTYPES)}, or random:SEED.")
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from None
  return genotype_from_json(d, known_ops=known_ops, where=f"{path}: ")


def format_genotype(genotype: Genotype) -> str:
  """A compact summary for logs, one line per cell.

  Example::

    normal: 2<-sep_conv_3x3(0),sep_conv_3x3(1) 3<-... concat=[2, 3, 4, 5]
    reduce: 2<-max_pool_3x3(0),max_pool_3x3(1) 3<-... concat=[2, 3, 4, 5]
  """
  def cell(entries, concat, per_node, first_node):
    nodes = []
    for n in range(0, len(entries), per_node):
      ops = ','.join(f'{op}({idx})' for op, idx in entries[n:n + per_node])
      nodes.append(f'{first_node + n // per_node}<-{ops}')
    return f"{' '.join(nodes)} concat={list(concat)}"

  return (f"normal: {cell(genotype.normal, genotype.normal_concat, 2, 2)}\n"
          f"reduce: {cell(genotype.reduce, genotype.reduce_concat, 2, 2)}")
