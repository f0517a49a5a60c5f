"""The DARTS CNN space's operation namespace: op factories by name, with their metadata.

Every candidate operation of the space (paper sec. 2.1) and every operation
a published cell names (NASNet, AmoebaNet) is a factory in `OPS`::

    factory(C, stride, affine, opts) -> nn.Module   # (N, H, W, C) -> (N, H/s, W/s, C)

registered together with `OpInfo` metadata that the space's code reads
instead of guessing from names:

* `parameter_free`: the operation has no weights of its own ('none', the
  poolings, 'skip_connect'); collapse diagnostics count how many of these a
  derived cell holds (the skip-connection collapse of DARTS). 'skip_connect'
  counts even though its stride-2 form (FactorizedReduce) has weights, as in
  the collapse literature.
* `search_bn`: the search-time `MixedOp` follows the operation with a
  non-affine BatchNorm (quark0/darts `cnn/model_search.py` does so for
  pooling, whose output is otherwise on a different scale than the
  normalised convolutions).

The names are this space's own: another space may call a different
operation 'avg_pool_3x3'. Users add operations with the decorator; the
metadata defaults to False::

    from jdarts.spaces.darts_cnn import primitives

    @primitives.OPS.register("max_pool_5x5", parameter_free=True, search_bn=True)
    def max_pool_5x5(C, stride, affine, opts):  # opts: jdarts.ops.OpOptions
      return MyPool(5, stride)

    # config: c.model.primitives = (..., "max_pool_5x5")
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import flax.linen as nn

from jdarts import genotypes
from jdarts import ops
from jdarts.registry import Registry

# The searched candidates, in alpha column order (sec. 2.1); the names are
# defined with the published genotypes, which need them without JAX.
PRIMITIVES: Tuple[str, ...] = genotypes.PRIMITIVES
# Operations that published cells use but the search does not consider.
EXTRA_OPS: Tuple[str, ...] = genotypes.EXTRA_OPS


@dataclasses.dataclass(frozen=True)
class OpInfo:
  """What the space needs to know about an operation besides how to build it.

  Attributes:
    parameter_free: no weights of its own (counted by collapse diagnostics).
    search_bn: the search `MixedOp` adds a non-affine BatchNorm after it.
  """
  parameter_free: bool = False
  search_bn: bool = False


class OpRegistry(Registry):
  """A `Registry` of op factories that also stores each operation's `OpInfo`."""

  def __init__(self, kind: str):
    super().__init__(kind)
    self._info: Dict[str, OpInfo] = {}

  def register(self, name: str, fn: Optional[Callable] = None, *, overwrite: bool = False,
               parameter_free: bool = False, search_bn: bool = False):
    """Registers factory `fn` and its metadata under `name`; a decorator if `fn` is omitted.

    Args:
      name: the operation's name in configs and genotypes.
      fn: `factory(C, stride, affine, opts) -> nn.Module`.
      overwrite: replace an existing operation (factory and metadata).
      parameter_free, search_bn: the `OpInfo` fields.
    """
    info = OpInfo(parameter_free=parameter_free, search_bn=search_bn)

    def _add(f):
      Registry.register(self, name, f, overwrite=overwrite)
      self._info[name] = info
      return f

    return _add if fn is None else _add(fn)

  def info(self, name: str) -> OpInfo:
    """The metadata of `name` (KeyError naming the known operations otherwise)."""
    self.get(name)
    return self._info[name]


OPS = OpRegistry("operation")


def op_info(name: str, registry: Optional[OpRegistry] = None) -> OpInfo:
  """The `OpInfo` registered with operation `name` in `registry` (default `OPS`)."""
  return (OPS if registry is None else registry).info(name)


def make_op(name: str, C: int, stride: int, affine: bool,
            opts: ops.OpOptions = ops.OpOptions(),
            registry: Optional[OpRegistry] = None) -> nn.Module:
  """Builds the registered operation `name` mapping C channels to C channels.

  Args:
    name: a key of `OPS` (e.g. 'sep_conv_3x3').
    C: input and output channels.
    stride: 1, or 2 for operations of a reduction cell's first two inputs.
    affine: whether BatchNorms have learnable scale and bias (False in search).
    opts: options shared by the network's operations.
    registry: the op namespace to look `name` up in; None: this space's `OPS`.
      Another space with the DARTS cell structure (e.g. sharpDARTS) passes
      its own `OpRegistry` through the cells and networks' `op_registry`.

  Returns:
    A module mapping (N, H, W, C) -> (N, H / stride, W / stride, C).

  Raises:
    KeyError: an unknown name (with the closest known one).
    ValueError: a stride other than 1 or 2 (DARTS cells have no other).
  """
  factory = (OPS if registry is None else registry).get(name)
  if stride not in (1, 2):
    raise ValueError(f"Operation {name!r}: stride must be 1 or 2, got {stride}.")
  return factory(C, stride, affine, opts)


@OPS.register("none", parameter_free=True)
def _none(C, stride, affine, opts):
  return ops.Zero(stride)


@OPS.register("max_pool_3x3", parameter_free=True, search_bn=True)
def _max_pool(C, stride, affine, opts):
  return ops.Pool("max", stride)


@OPS.register("avg_pool_3x3", parameter_free=True, search_bn=True)
def _avg_pool(C, stride, affine, opts):
  return ops.Pool("avg", stride)


@OPS.register("skip_connect", parameter_free=True)
def _skip(C, stride, affine, opts):
  return ops.Identity() if stride == 1 else ops.FactorizedReduce(C, affine, opts)


@OPS.register("sep_conv_3x3")
def _sep3(C, stride, affine, opts):
  return ops.SepConv(C, 3, stride, 1, affine, opts)


@OPS.register("sep_conv_5x5")
def _sep5(C, stride, affine, opts):
  return ops.SepConv(C, 5, stride, 2, affine, opts)


@OPS.register("sep_conv_7x7")
def _sep7(C, stride, affine, opts):
  return ops.SepConv(C, 7, stride, 3, affine, opts)


@OPS.register("dil_conv_3x3")
def _dil3(C, stride, affine, opts):
  return ops.DilConv(C, 3, stride, 2, 2, affine, opts)


@OPS.register("dil_conv_5x5")
def _dil5(C, stride, affine, opts):
  return ops.DilConv(C, 5, stride, 4, 2, affine, opts)


@OPS.register("conv_7x1_1x7")
def _conv71(C, stride, affine, opts):
  return ops.Conv7x1_1x7(C, stride, affine, opts)


__all__ = ["OPS", "OpInfo", "OpRegistry", "PRIMITIVES", "EXTRA_OPS", "make_op", "op_info"]
