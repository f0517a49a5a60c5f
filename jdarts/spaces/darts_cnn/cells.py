"""The DARTS cell in its two forms: the search cell over mixed edges and the discrete cell.

Both share the cell's frame (quark0/darts `cnn/model_search.py` and
`cnn/model.py`, in NHWC): the two inputs, outputs of the cells two back (s0)
and one back (s1), are preprocessed to C channels (FactorizedReduce when the
previous cell halved the resolution, else ReLU-1x1conv-BN); node i (2, 3,
...) sums operations on earlier states; the output concatenates nodes on the
channel axis. They differ in the edges:

* `SearchCell`: every edge j -> i is a `MixedOp`, the alpha-weighted sum of
  all candidates (paper eq. 2), with search BatchNorm (batch statistics, no
  affine parameters); the output is the last `multiplier` nodes.
  `BatchedSearchCell` computes the same function per source state
  (`batched_edges.SourceEdges`).
* `Cell`: two operations per node named by a genotype, affine BatchNorm with
  running averages, drop-path (Larsson et al., FractalNet; paper A.2.1 "path
  dropout") in training; the output is the genotype's `concat` nodes.

Edges are numbered node by node, each from state 0 upwards (the alpha row
order of the reference): node i's edges are offset_i + 0 .. offset_i + i + 1
with offset_i = 2 + 3 + ... (i terms).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdarts import ops
from jdarts.spaces.darts_cnn import batched_edges
from jdarts.spaces.darts_cnn import primitives

Scalar = Union[float, jnp.ndarray]


def num_edges(steps: int) -> int:
  """Edges of a cell with `steps` intermediate nodes: 2 + 3 + ... = 14 for 4."""
  return sum(2 + i for i in range(steps))


def edges_from_source(j: int, steps: int):
  """(target node, edge index) of the edges leaving state j (0: s0, 1: s1, 2 + i: node i).

  Node i reads states 0 .. i + 1 through edges offset_i + 0 .. offset_i + i + 1,
  offset_i = 2 + 3 + ... (i terms), the alpha row order of the reference.
  """
  return [(i, num_edges(i) + j) for i in range(max(0, j - 1), steps)]


def preprocess(C: int, reduction_prev: bool, affine: bool, opts: ops.OpOptions, s0, s1,
               train: bool, names: Tuple[Optional[str], Optional[str]] = (None, None)):
  """Both cells' input preprocessing: s0, s1 -> (N, H, W, C) each.

  Called inside a cell's compact `__call__`, so the modules are the cell's
  children: auto-named (FactorizedReduce_0 / ReLUConvBN_0, ReLUConvBN_1) in
  the search cell, `names` ('preprocess0', 'preprocess1') in the discrete
  one, as the reference names them.

  Args:
    C: output channels.
    reduction_prev: s0 has twice s1's resolution and is halved.
    affine: BatchNorm scale and bias (discrete cells only).
    opts: operation options.
    s0, s1: (N, H0, W0, C0) and (N, H, W, C1).
    train: BatchNorm mode.
    names: module names of the two preprocessing ops (None: automatic).
  """
  if reduction_prev:
    s0 = ops.FactorizedReduce(C, affine, opts, name=names[0])(s0, train)
  else:
    s0 = ops.ReLUConvBN(C, 1, 1, 0, affine, opts, name=names[0])(s0, train)
  s1 = ops.ReLUConvBN(C, 1, 1, 0, affine, opts, name=names[1])(s1, train)
  return s0, s1


# ---------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------

class MixedOp(nn.Module):
  """Weighted sum of every candidate operation on one edge (paper eq. 2).

  Called with x: (N, H, W, C) and weights: (num_ops,), returns
  (N, H / stride, W / stride, C). 'none' contributes exactly zero, so it is not
  computed; an operation registered with `search_bn` (pooling) is followed by
  a non-affine BN, as in the reference.
  """
  C: int
  stride: int
  primitives: Sequence[str]
  opts: ops.OpOptions
  # The op namespace (`primitives.OpRegistry`); None: the DARTS space's OPS.
  op_registry: Any = None

  @nn.compact
  def __call__(self, x, weights, train: bool = True):
    out = 0.0
    reg = self.op_registry
    for k, name in enumerate(self.primitives):
      if name == "none":
        continue
      y = primitives.make_op(name, self.C, self.stride, False, self.opts, reg)(x, train)
      if primitives.op_info(name, reg).search_bn:
        y = ops.BatchNorm(False, self.opts)(y, train)
      out = out + weights[k].astype(y.dtype) * y
    if isinstance(out, float):  # every candidate is 'none'
      out = jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])
    # Materialise the mixed output once: otherwise XLA fuses the weighted sum
    # into its consumers (the node sum, the next cell's ReLUs and BatchNorms)
    # and recomputes it in each. On XLA:CPU the barrier holds only under
    # `parallel.default_compiler_options()` (small weight step: ~15% faster,
    # compiled ~30% sooner; benchmarks/RESULTS.md).
    return jax.lax.optimization_barrier(out)


class SearchCell(nn.Module):
  """A DARTS search cell: 2 inputs, `steps` nodes, output concat of the last ones.

  Args (call): s0, s1: (N, H, W, C_pp) and (N, H', W', C_p) outputs of the two
  previous cells; weights: (num_edges, num_ops) mixing weights.
  Returns: (N, H'/s, W'/s, multiplier * C), s = 2 for a reduction cell.
  """
  C: int
  reduction: bool
  reduction_prev: bool
  primitives: Sequence[str]
  opts: ops.OpOptions
  steps: int = 4
  multiplier: int = 4
  op_registry: Any = None  # as MixedOp's

  @nn.compact
  def __call__(self, s0, s1, weights, train: bool = True):
    s0, s1 = preprocess(self.C, self.reduction_prev, False, self.opts, s0, s1, train)
    states = [s0, s1]
    offset = 0
    for _ in range(self.steps):
      node = 0.0
      for j, h in enumerate(states):
        stride = 2 if self.reduction and j < 2 else 1
        node = node + MixedOp(self.C, stride, tuple(self.primitives), self.opts,
                              self.op_registry)(
            h, weights[offset + j], train)
      offset += len(states)
      states.append(node)
    return jnp.concatenate(states[-self.multiplier:], axis=-1)


class BatchedSearchCell(nn.Module):
  """`SearchCell` computed per source state instead of per edge (same results).

  The edges leaving a state share its input and stride, so
  `batched_edges.SourceEdges` computes all of them at once (parameter-free
  candidates shared, one call per candidate and layer for the parametric
  ones); each node then sums the slices of its incoming edges. Parameters: the
  preprocessing as in `SearchCell`, and `source_<j>/<primitive>/...` holding
  the per-edge parameters of the edges leaving state j stacked in target
  order (`network.to_batched_params`). States: 0 = s0, 1 = s1, 2 + i = node
  i; the last node has no outgoing edge.

  Args and returns (call): as `SearchCell`.
  """
  C: int
  reduction: bool
  reduction_prev: bool
  primitives: Sequence[str]
  opts: ops.OpOptions
  steps: int = 4
  multiplier: int = 4

  @nn.compact
  def __call__(self, s0, s1, weights, train: bool = True):
    s0, s1 = preprocess(self.C, self.reduction_prev, False, self.opts, s0, s1, train)
    states = [s0, s1]
    incoming = [[] for _ in range(self.steps)]  # node i's edge outputs
    for j in range(self.steps + 1):
      if j >= 2:  # every edge into node j - 2 comes from states < j: complete
        states.append(sum(incoming[j - 2]))
      targets = edges_from_source(j, self.steps)
      stride = 2 if self.reduction and j < 2 else 1
      y = batched_edges.SourceEdges(self.C, stride, tuple(self.primitives), self.opts,
                                    name=f"source_{j}")(
          states[j], weights[np.array([e for _, e in targets])], train)
      for t, (i, _) in enumerate(targets):
        incoming[i].append(y[t])
    states.append(sum(incoming[-1]))
    return jnp.concatenate(states[-self.multiplier:], axis=-1)


# ---------------------------------------------------------------------------
# Evaluation: the discrete cell of a genotype
# ---------------------------------------------------------------------------

def drop_path(x, drop_prob: Scalar, rng):
  """Zeroes whole examples of x with probability `drop_prob`, scales the rest.

  Args:
    x: (N, ...) activations.
    drop_prob: probability p in [0, 1) of dropping an example; may be traced.
    rng: PRNG key.

  Returns:
    x * mask / (1 - p) with one Bernoulli(1 - p) mask entry per example.
  """
  keep = 1.0 - jnp.asarray(drop_prob, jnp.float32)
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask.astype(x.dtype) / keep.astype(x.dtype))


def _is_static_zero(p) -> bool:
  return isinstance(p, (int, float, np.floating, np.integer)) and float(p) == 0.0


class CellOp(nn.Module):
  """One genotype entry: the named operation, then drop-path in training.

  Holds the operation under its own name, so parameter paths read
  `cell_3/op_0/SepConv_0/...` in genotype order. As in the reference,
  drop-path skips operations that are the identity (stride-1 skip_connect).
  Its random numbers come from the 'dropout' RNG stream, so callers pass
  `rngs={'dropout': key}`.
  """
  primitive: str
  C: int
  stride: int
  opts: ops.OpOptions
  op_registry: Any = None  # the op namespace; None: the DARTS space's OPS

  @nn.compact
  def __call__(self, x, drop_prob: Scalar = 0.0, train: bool = True):
    op = primitives.make_op(self.primitive, self.C, self.stride, True, self.opts,
                            self.op_registry)
    y = op(x, train)
    if train and not _is_static_zero(drop_prob) and not isinstance(op, ops.Identity):
      y = drop_path(y, drop_prob, self.make_rng("dropout"))
    return y


class Cell(nn.Module):
  """A discrete DARTS cell (the reference's `Cell`, quark0/darts `cnn/model.py`).

  Attributes:
    entries: `(op_name, input_index)` pairs, two per intermediate node
      (`Genotype.normal` or `Genotype.reduce`).
    concat: node indices concatenated into the output.
    C: channels of every node.
    reduction: halve the resolution (stride 2 on the inputs' operations).
    reduction_prev: the previous cell halved the resolution, so input s0 is
      twice as large as s1 and is reduced by FactorizedReduce.
    opts: operation options (BatchNorm mode, depthwise implementation, dtype).

  Call: `(s0, s1, drop_prob, train)` with s0 (N, H0, W0, C0), s1 (N, H, W, C1);
  returns (N, H / s, W / s, len(concat) * C), s = 2 for a reduction cell.
  """
  entries: Sequence[Tuple[str, int]]
  concat: Sequence[int]
  C: int
  reduction: bool
  reduction_prev: bool
  opts: ops.OpOptions
  op_registry: Any = None  # the op namespace; None: the DARTS space's OPS

  @property
  def multiplier(self) -> int:
    return len(self.concat)

  @nn.compact
  def __call__(self, s0, s1, drop_prob: Scalar = 0.0, train: bool = True):
    s0, s1 = preprocess(self.C, self.reduction_prev, True, self.opts, s0, s1, train,
                        names=("preprocess0", "preprocess1"))
    states = [s0, s1]
    for node in range(len(self.entries) // 2):
      total = None
      for k in (2 * node, 2 * node + 1):
        name, index = self.entries[k]
        stride = 2 if self.reduction and index < 2 else 1
        h = CellOp(name, self.C, stride, self.opts, self.op_registry, name=f"op_{k}")(
            states[index], drop_prob, train)
        total = h if total is None else total + h
      states.append(total)
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


def torch_bias_init(fan_in: int):
  """PyTorch's default Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def classifier(num_classes: int, fan_in: int, name: Optional[str] = None) -> nn.Dense:
  """A Linear layer initialised as PyTorch's nn.Linear (supernet and evaluation networks).

  Modern PyTorch's init (see `ops.torch_default_init`); for Linear layers it is
  also PyTorch 0.3's, the reference's: U(+-1/sqrt(fan_in)) for weight and bias.
  """
  return nn.Dense(num_classes, kernel_init=ops.torch_default_init,
                  bias_init=torch_bias_init(fan_in), name=name)


__all__ = ["num_edges", "edges_from_source", "preprocess", "MixedOp", "SearchCell",
           "BatchedSearchCell", "drop_path", "CellOp", "Cell", "torch_bias_init",
           "classifier"]
