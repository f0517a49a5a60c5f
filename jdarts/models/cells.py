"""Building blocks shared by the discrete evaluation networks: cell, drop-path.

A discrete cell is the reference's `Cell` (quark0/darts `cnn/model.py`) in
NHWC: its two inputs are preprocessed to C channels (FactorizedReduce when the
previous cell halved the resolution, else ReLU-1x1conv-BN), then every
intermediate node sums two operations named by the genotype, each applied to
one earlier node; the output concatenates the genotype's `concat` nodes on the
channel axis. Operations come from the `jdarts.ops.OPS` registry with affine
BatchNorm.

Drop-path (Larsson et al., FractalNet; paper A.2.1 "path dropout") zeroes the
output of an operation for whole examples with probability p during training
and scales the kept ones by 1 / (1 - p). As in the reference it skips
operations that are the identity (stride-1 skip_connect). Its random numbers
come from the 'dropout' RNG stream, so callers pass `rngs={'dropout': key}`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdarts import ops

Scalar = Union[float, jnp.ndarray]


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
  `cell_3/op_0/SepConv_0/...` in genotype order.
  """
  primitive: str
  C: int
  stride: int
  opts: ops.OpOptions

  @nn.compact
  def __call__(self, x, drop_prob: Scalar = 0.0, train: bool = True):
    op = ops.make_op(self.primitive, self.C, self.stride, True, self.opts)
    y = op(x, train)
    if train and not _is_static_zero(drop_prob) and not isinstance(op, ops.Identity):
      y = drop_path(y, drop_prob, self.make_rng("dropout"))
    return y


class Cell(nn.Module):
  """A discrete DARTS cell.

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

  @property
  def multiplier(self) -> int:
    return len(self.concat)

  @nn.compact
  def __call__(self, s0, s1, drop_prob: Scalar = 0.0, train: bool = True):
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(self.C, True, self.opts, name="preprocess0")(s0, train)
    else:
      s0 = ops.ReLUConvBN(self.C, 1, 1, 0, True, self.opts, name="preprocess0")(s0, train)
    s1 = ops.ReLUConvBN(self.C, 1, 1, 0, True, self.opts, name="preprocess1")(s1, train)
    states = [s0, s1]
    for node in range(len(self.entries) // 2):
      total = None
      for k in (2 * node, 2 * node + 1):
        name, index = self.entries[k]
        stride = 2 if self.reduction and index < 2 else 1
        h = CellOp(name, self.C, stride, self.opts, name=f"op_{k}")(
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
  """A Linear layer initialised as PyTorch's nn.Linear."""
  return nn.Dense(num_classes, kernel_init=ops.torch_default_init,
                  bias_init=torch_bias_init(fan_in), name=name)

