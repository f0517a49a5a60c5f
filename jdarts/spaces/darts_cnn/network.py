"""The DARTS CNN search supernet (paper sec. 2.1, A.1.1) and its two parameter layouts.

A supernet of `layers` cells (reduction cells at layers // 3 and
2 * layers // 3) whose every edge is a mixed operation over `primitives`.
The architecture is two arrays, `alphas = {'normal': (E, O), 'reduce': (E, O)}`
(E = 14 edges for 4 nodes, O operations), passed to the call and never stored
in the network.

Reference layout (quark0/darts `cnn/model_search.py`), in NHWC: stem 3x3 conv
to stem_multiplier * C + BN (affine, batch statistics) -> cells -> global
average pool -> linear classifier.

`Network(batch_edges=True)` (config `model.batch_edges`) computes each cell
per source state (`cells.BatchedSearchCell`): the same function with fewer,
larger ops and the parameters in the layout of `to_batched_params`.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdarts import mixing
from jdarts import ops
from jdarts.spaces.darts_cnn import primitives as primitives_lib
from jdarts.spaces.darts_cnn.cells import (BatchedSearchCell, SearchCell, classifier,
                                           edges_from_source)


class Network(nn.Module):
  """The DARTS search supernet: (N, H, W, C_in) images -> (N, num_classes) logits.

  Call: `(x, alphas, train)` with alphas {'normal', 'reduce'}: (num_edges,
  num_ops) logits, turned into edge weights by the mixing named `mixing`.
  """
  C: int = 16
  num_classes: int = 10
  layers: int = 8
  steps: int = 4
  multiplier: int = 4
  stem_multiplier: int = 3
  primitives: Sequence[str] = primitives_lib.PRIMITIVES
  mixing: str = "softmax"
  remat: bool = False
  opts: ops.OpOptions = ops.OpOptions()
  # Per-source edge batching (BatchedSearchCell): same function, params in
  # the layout of `to_batched_params`.
  batch_edges: bool = False
  # The op namespace (`primitives.OpRegistry`) the primitives are looked up
  # in; None: the DARTS space's OPS. Per-source batching supports only that one.
  op_registry: Any = None

  @nn.compact
  def __call__(self, x, alphas: Dict[str, jnp.ndarray], train: bool = True):
    opts = self.opts
    x = x.astype(opts.dtype)
    C_curr = self.stem_multiplier * self.C
    # The reference's stem BN keeps its affine parameters even during search.
    s = ops._conv(C_curr, 3, 1, 1, opts=opts, name="stem_conv")(x)
    s = ops.BatchNorm(True, opts, name="stem_bn")(s, train)
    s0 = s1 = s
    w_normal = mixing.mix(self.mixing, alphas["normal"])
    w_reduce = mixing.mix(self.mixing, alphas["reduce"])
    if self.batch_edges and self.op_registry is not None:
      raise ValueError("batch_edges supports only the DARTS space's operations "
                       "(op_registry=None).")
    cell_cls = BatchedSearchCell if self.batch_edges else SearchCell
    if self.remat:
      cell_cls = nn.remat(cell_cls, static_argnums=(4,))
    C_curr = self.C
    reduction_prev = False
    for i in range(self.layers):
      reduction = i in (self.layers // 3, 2 * self.layers // 3)
      if reduction:
        C_curr *= 2
      extra = () if self.batch_edges else (self.op_registry,)
      cell = cell_cls(C_curr, reduction, reduction_prev, tuple(self.primitives),
                      opts, self.steps, self.multiplier, *extra, name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, w_reduce if reduction else w_normal, train)
      reduction_prev = reduction
    out = jnp.mean(s1.astype(jnp.promote_types(s1.dtype, jnp.float32)), axis=(1, 2))
    return classifier(self.num_classes, out.shape[-1], name="classifier")(out)


# ---------------------------------------------------------------------------
# Per-edge <-> per-source parameter layouts
# ---------------------------------------------------------------------------

def _cells(net: Network):
  """(name, C, reduction) of each cell of `net`, as `Network.__call__` builds them."""
  cells, C = [], net.C
  for i in range(net.layers):
    reduction = i in (net.layers // 3, 2 * net.layers // 3)
    C = 2 * C if reduction else C
    cells.append((f"cell_{i}", C, reduction))
  return cells


def _mixed_op_child_names(primitives, C, stride, opts) -> Dict[str, str]:
  """{primitive: its submodule's name inside `MixedOp`}.

  Flax names unnamed submodules <Class>_<n> in creation order; MixedOp creates
  each candidate, then a BatchNorm after each `search_bn` one. Call outside
  any module.
  """
  names, seen = {}, {}

  def take(cls):
    seen[cls] = seen.get(cls, 0) + 1
    return f"{cls}_{seen[cls] - 1}"
  for p in primitives:
    if p == "none":
      continue
    names[p] = take(type(primitives_lib.make_op(p, C, stride, False, opts)).__name__)
    if primitives_lib.op_info(p).search_bn:
      take("BatchNorm")
  return names


def _source_children(net: Network, C: int, reduction: bool, j: int) -> Dict[str, str]:
  """MixedOp child names of the edges leaving state j of a cell (stride-dependent)."""
  stride = 2 if reduction and j < 2 else 1
  return _mixed_op_child_names(net.primitives, C, stride, net.opts)


def to_batched_params(params, net: Network):
  """Converts per-edge supernet parameters to the `batch_edges=True` layout.

  In every cell the `MixedOp_<e>` subtrees become `source_<j>/<primitive>/...`:
  the parameters of each primitive on the edges leaving state j, stacked on a
  new leading axis in target-node order (see `BatchedSearchCell`). Everything
  else (stem, preprocessing, classifier) is unchanged, and so is the number
  of parameters. Works under `jax.eval_shape`/`jit`; call outside any module.

  Args:
    params: `params` of `net` with `batch_edges=False` (e.g. an old checkpoint).
    net: the supernet (its layers, steps, primitives and C); `batch_edges` is
      ignored.

  Returns:
    `params` for `net.clone(batch_edges=True)`, computing the same function.
  """
  out = dict(params)
  for name, C, reduction in _cells(net):
    cell = params[name]
    if any(k.startswith("source_") for k in cell):
      raise ValueError(f"{name} is already in the batched layout (has source_<j>).")
    new = {k: v for k, v in cell.items() if not k.startswith("MixedOp_")}
    used = set()
    for j in range(net.steps + 1):
      targets = edges_from_source(j, net.steps)
      for prim, child in _source_children(net, C, reduction, j).items():
        per_edge = [cell[f"MixedOp_{e}"][child] for _, e in targets
                    if child in cell.get(f"MixedOp_{e}", {})]
        if per_edge:
          new.setdefault(f"source_{j}", {})[prim] = jax.tree_util.tree_map(
              lambda *xs: jnp.stack(xs), *per_edge)
        used |= {(f"MixedOp_{e}", child) for _, e in targets}
    extra = sorted(f"{m}/{c}" for m, sub in cell.items() if m.startswith("MixedOp_")
                   for c in sub if (m, c) not in used)
    if extra:
      raise ValueError(f"{name}: parameters {extra} belong to none of the primitives "
                       f"{tuple(net.primitives)}; is `net` the network they came from?")
    out[name] = new
  return out


def from_batched_params(params, net: Network):
  """Inverse of `to_batched_params`: `batch_edges=True` params -> per-edge layout."""
  out = dict(params)
  for name, C, reduction in _cells(net):
    cell = params[name]
    new = {k: v for k, v in cell.items() if not k.startswith("source_")}
    for j in range(net.steps + 1):
      children = _source_children(net, C, reduction, j)
      for prim, stacked in cell.get(f"source_{j}", {}).items():
        for t, (_, e) in enumerate(edges_from_source(j, net.steps)):
          new.setdefault(f"MixedOp_{e}", {})[children[prim]] = jax.tree_util.tree_map(
              lambda a, t=t: a[t], stacked)
    out[name] = new
  return out


__all__ = ["Network", "to_batched_params", "from_batched_params"]
