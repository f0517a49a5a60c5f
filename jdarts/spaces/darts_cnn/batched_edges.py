"""The DARTS CNN search cell's mixed operations of all edges leaving one state, computed together.

In a DARTS search cell every edge leaving a state (s0, s1 or an intermediate
node) reads the same input at the same stride. `SourceEdges` therefore
computes the k mixed operations on those edges at once instead of one
`MixedOp` per edge:

* Parameter-free candidates run once and are shared by the k edges: pooling
  followed by search BatchNorm (batch statistics, no affine parameters, hence
  no per-edge state) and the identity give the same tensor on every edge.
* Parametric candidates share one ReLU of the input. The first layer's
  depthwise convolution is one call per candidate for all k edges (on the
  shared input, kernels stacked as a channel multiplier k); then, layer by
  layer, the candidates still running are stacked on a leading edge axis, so
  their 1x1 convolutions are one batched matmul and their BatchNorms one
  BatchNorm of (G, N, H, W, C), G = candidates x k, with moments per (group,
  channel): the same as G separate BatchNorms. FactorizedReduce (strided
  skip) likewise.
* Any other registered operation runs per edge under `nn.vmap`, with the
  same stacked parameters (exact, just not fused).

Activations are edge-major, (k, N, H, W, C): slicing an edge is contiguous
and batched matmuls need no transposes (XLA's batched dot wants the batch
axis first). Fewer, larger XLA ops than the per-edge graph, so compiles are
faster (benchmarks/RESULTS.md); the dense block-diagonal depthwise
convolutions, whose work batching cannot reduce, dominate the CPU step.

Parameter layout: the parameters of candidate `p` on the k edges are the
per-edge `MixedOp` parameters of `p` stacked on a new leading axis (edges in
target-node order), at the per-edge sub-paths, e.g.
`sep_conv_3x3/DilConv_1/DepthwiseConv_0/conv/kernel` of shape (k, 3, 3, 1, C).
`jdarts.spaces.darts_cnn.network.to_batched_params` converts a per-edge
checkpoint and back. Specific to this space: the batched forms below are
those of its operations (`primitives.OPS`), and the stacking follows its cell.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jdarts import ops
from jdarts.spaces.darts_cnn import primitives


@dataclasses.dataclass(frozen=True)
class ConvCandidate:
  """`layers` x [ReLU -> depthwise k x k conv -> 1x1 conv -> BN], C -> C channels.

  layers=1 is `ops.DilConv`, layers=2 `ops.SepConv` (only its first layer strides).
  """
  kernel_size: int
  padding: int
  dilation: int
  layers: int


# How each built-in candidate runs batched; mirrors the factories in `primitives`.
BATCHED_CANDIDATES: Dict[str, object] = {
    "max_pool_3x3": "max",
    "avg_pool_3x3": "avg",
    "skip_connect": "skip",
    "sep_conv_3x3": ConvCandidate(3, 1, 1, 2),
    "sep_conv_5x5": ConvCandidate(5, 2, 1, 2),
    "sep_conv_7x7": ConvCandidate(7, 3, 1, 2),
    "dil_conv_3x3": ConvCandidate(3, 2, 2, 1),
    "dil_conv_5x5": ConvCandidate(5, 4, 2, 1),
}
# The factories and metadata the table describes. A name re-registered in
# primitives.OPS since import is no longer described by it and takes the
# generic per-edge path.
_DESCRIBED = {name: (primitives.OPS.get(name), primitives.op_info(name))
              for name in BATCHED_CANDIDATES}


def batched_candidate(name: str):
  """The batched form of primitive `name`, or None if it must run per edge."""
  if (name in BATCHED_CANDIDATES and
      (primitives.OPS.get(name), primitives.op_info(name)) == _DESCRIBED[name]):
    return BATCHED_CANDIDATES[name]
  return None


# ---------------------------------------------------------------------------
# Functional building blocks on stacked kernels
# ---------------------------------------------------------------------------

def _conv(x, kernel, stride, padding, dilation, groups):
  """NHWC/HWIO convolution with the arguments `nn.Conv` passes to XLA."""
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups)


def depthwise_shared_input(x, kernels, stride: int, padding: int, dilation: int,
                           impl: str):
  """k depthwise convolutions of one input, one kernel per edge.

  Args:
    x: (N, H, W, C) input, shared by the k edges.
    kernels: (k, kh, kw, 1, C) per-edge depthwise kernels, stacked.
    stride, padding, dilation: as for a convolution (symmetric padding).
    impl: 'xla' | 'shift' | 'dense' | 'fused' (see `ops.DepthwiseConv`).

  Returns:
    (k, N, H_out, W_out, C), edge-major: [e] is edge e's convolution.
  """
  k, kh, kw, _, C = kernels.shape
  kernels = kernels.astype(x.dtype)
  if impl == "xla":
    # One grouped convolution with channel multiplier k: output channel c*k + e
    # is channel c convolved with edge e's kernel.
    w = jnp.transpose(kernels, (1, 2, 3, 4, 0)).reshape(kh, kw, 1, C * k)
    y = _conv(x, w, stride, padding, dilation, groups=C)
    return jnp.transpose(y.reshape(y.shape[:3] + (C, k)), (4, 0, 1, 2, 3))
  if impl == "dense":
    # One dense C -> k*C convolution whose kernel is nonzero only where the
    # output channel e*C + c reads input channel c.
    full = kernels[:, :, :, 0, :, None] * jnp.eye(C, dtype=x.dtype)  # (k, kh, kw, C, C)
    full = jnp.transpose(full, (1, 2, 3, 0, 4)).reshape(kh, kw, C, k * C)
    y = _conv(x, full, stride, padding, dilation, groups=1)
    return jnp.moveaxis(y.reshape(y.shape[:3] + (k, C)), 3, 0)
  if impl == "fused":
    # One tap-sum convolution per edge: its kernel gradient is per kernel.
    return jnp.stack([ops.depthwise_conv_fused(x, kernels[e], stride, padding, dilation)
                      for e in range(k)])
  if impl == "shift":
    # A sum of kh*kw shifted copies, each scaled by the k edges' taps at once.
    out = None
    for i, j, patch in ops.shifted_taps(x, kh, kw, stride, padding, dilation):
      term = patch[None] * kernels[:, i, j, 0, None, None, None, :]
      out = term if out is None else out + term
    return out
  raise ValueError(f"Unknown depthwise implementation {impl!r}.")


def depthwise_per_edge(x, kernels, stride: int, padding: int, dilation: int, impl: str):
  """One depthwise convolution per edge, each on its own input.

  Args:
    x: (k, N, H, W, C) per-edge inputs, edge-major.
    kernels: (k, kh, kw, 1, C) per-edge depthwise kernels, stacked.
    stride, padding, dilation, impl: as `depthwise_shared_input`.

  Returns:
    (k, N, H_out, W_out, C).
  """
  k, kh, kw, _, C = kernels.shape
  if impl in ("dense", "fused"):
    # One convolution per edge: over all k*C channels at once the dense
    # form's kernel would be k times larger and mostly zeros (k times the
    # work), and the fused form's kernel gradient is per kernel.
    conv = ops.depthwise_conv_dense if impl == "dense" else ops.depthwise_conv_fused
    return jnp.stack([conv(x[e], kernels[e], stride, padding, dilation) for e in range(k)])
  kernels = kernels.astype(x.dtype)
  if impl == "shift":
    # The edges ride in the batch axis; each tap scales edge e by its own kernel.
    n = x.shape[1]
    out = None
    for i, j, patch in ops.shifted_taps(x.reshape((k * n,) + x.shape[2:]), kh, kw, stride,
                                        padding, dilation):
      term = patch.reshape((k, n) + patch.shape[1:]) * kernels[:, i, j, 0, None, None, None, :]
      out = term if out is None else out + term
    return out
  if impl == "xla":
    # The k edges are k*C independent channels of one depthwise convolution.
    xs = jnp.transpose(x, (1, 2, 3, 0, 4)).reshape(x.shape[1:4] + (k * C,))
    w = jnp.transpose(kernels, (1, 2, 3, 0, 4)).reshape(kh, kw, 1, k * C)
    y = _conv(xs, w, stride, padding, dilation, groups=k * C)
    return jnp.transpose(y.reshape(y.shape[:3] + (k, C)), (3, 0, 1, 2, 4))
  raise ValueError(f"Unknown depthwise implementation {impl!r}.")


def pointwise_per_edge(x, kernels):
  """1x1 convolutions, one per edge: (G, N, H, W, C_in) x (G, 1, 1, C_in, C_out).

  Returns (G, N, H, W, C_out): one batched matmul, the edge axis leading (the
  layout XLA's batched dot wants, so no transposes around it).
  """
  return jnp.einsum("gnhwc,gcd->gnhwd", x, kernels[:, 0, 0].astype(x.dtype))


def pointwise_shared_input(x, kernels):
  """1x1 convolutions of one input, one per edge: (N, H, W, C_in) x (G, 1, 1, C_in, C_out).

  Returns (G, N, H, W, C_out).
  """
  return jnp.einsum("nhwc,gcd->gnhwd", x, kernels[:, 0, 0].astype(x.dtype))


def edge_batch_norm(opts: ops.OpOptions, name=None) -> ops.BatchNorm:
  """The search BatchNorm of (G, N, H, W, C): G separate BatchNorms in one."""
  return ops.BatchNorm(False, opts, axes=(1, 2, 3), name=name)


# ---------------------------------------------------------------------------
# Stacked parameters at the per-edge paths
# ---------------------------------------------------------------------------

def per_edge_init(init):
  """An initialiser of (k, *shape) arrays: k independent draws of `init` on `shape`.

  Edge e's copy is `init(fold_in(key, e), shape)`, so every draw has the
  per-edge shape (the fan-in is that of one edge's operation) and reuses the
  compiled random program of that shape: one stacked shape per (k, shape)
  would compile its own threefry program (~0.1 s each on CPU, ~200 of them at
  the quickstart's size).
  """
  def f(key, shape, dtype=jnp.float32):
    draws = [init(jax.random.fold_in(key, e), tuple(shape[1:]), dtype)
             for e in range(shape[0])]
    return jnp.stack(draws)
  return f


# Modern PyTorch's default conv initialisation (ops.torch_default_init, which
# says how it differs from the PyTorch 0.3 of the reference) of each edge's copy.
stacked_torch_init = per_edge_init(ops.torch_default_init)

Leaves = Tuple[Tuple[Tuple[str, ...], Tuple[int, ...]], ...]


class StackedParams(nn.Module):
  """k stacked copies of per-edge parameters, at the per-edge paths.

  Attributes:
    leaves: ((path, per-edge shape), ...), paths relative to this module.
    num_edges: k, the size of the new leading axis.

  Returns (call): {'/'.join(path): (k, *shape) array}.
  """
  leaves: Leaves
  num_edges: int

  @nn.compact
  def __call__(self):
    out, nested = {}, {}
    for path, shape in self.leaves:
      if len(path) == 1:
        out[path[0]] = self.param(path[0], stacked_torch_init,
                                  (self.num_edges,) + tuple(shape))
      else:
        nested.setdefault(path[0], []).append((path[1:], shape))
    for name, sub in nested.items():
      got = StackedParams(tuple(sub), self.num_edges, name=name)()
      out.update({f"{name}/{key}": value for key, value in got.items()})
    return out


def _dil_conv_leaves(C: int, kernel_size: int, prefix: Tuple[str, ...] = ()) -> Leaves:
  """Parameters of one `ops.DilConv(C, ...)` (depthwise kernel, 1x1 kernel)."""
  return ((prefix + ("DepthwiseConv_0", "conv", "kernel"), (kernel_size, kernel_size, 1, C)),
          (prefix + ("Conv_0", "kernel"), (1, 1, C, C)))


def _conv_layer_prefix(cand: ConvCandidate, layer: int) -> str:
  """Where layer `layer` of a candidate lives: SepConv nests two DilConvs."""
  return f"DilConv_{layer}/" if cand.layers > 1 else ""


def conv_candidate_leaves(cand: ConvCandidate, C: int) -> Leaves:
  if cand.layers == 1:
    return _dil_conv_leaves(C, cand.kernel_size)
  return sum((_dil_conv_leaves(C, cand.kernel_size, (f"DilConv_{i}",))
              for i in range(cand.layers)), ())


def factorized_reduce_leaves(C: int) -> Leaves:
  """Parameters of one `ops.FactorizedReduce(C)`: two 1x1 C -> C/2 kernels."""
  return ((("Conv_0", "kernel"), (1, 1, C, C // 2)),
          (("Conv_1", "kernel"), (1, 1, C, C // 2)))


# ---------------------------------------------------------------------------
# The edges leaving one state
# ---------------------------------------------------------------------------

class _PerEdgeCandidate(nn.Module):
  """One edge's copy of a candidate without a batched form (run under nn.vmap).

  Shares its scope with the operation, so its parameters sit at
  `<primitive>/<the operation's own paths>` as for the batched candidates.
  """
  primitive: str
  C: int
  stride: int
  opts: ops.OpOptions
  train: bool

  @nn.compact
  def __call__(self, x):
    op = primitives.make_op(self.primitive, self.C, self.stride, False, self.opts)
    nn.share_scope(self, op)
    y = op(x, self.train)
    if primitives.op_info(self.primitive).search_bn:  # as MixedOp
      y = ops.BatchNorm(False, self.opts, name="pool_bn")(y, self.train)
    return y


class SourceEdges(nn.Module):
  """The k mixed operations (paper eq. 2) on the edges leaving one cell state.

  Equals k `cells.MixedOp`s applied to the same input, with the per-edge
  parameters stacked (module docstring).

  Attributes:
    C: channels of the input and of every edge's output.
    stride: of every edge (2 for a reduction cell's inputs s0, s1).
    primitives: candidate names, in mixing-weight column order.
    opts: options shared by the network's operations.
  """
  C: int
  stride: int
  primitives: Sequence[str]
  opts: ops.OpOptions

  @nn.compact
  def __call__(self, x, weights, train: bool = True):
    """Mixes the candidates on every edge.

    Args:
      x: (N, H, W, C) the source state.
      weights: (k, num_ops) mixing weights of the k edges, in target order.
      train: BatchNorm mode (search BN always uses batch statistics).

    Returns:
      (k, N, H / stride, W / stride, C), edge-major: [e] is edge e's mixed output.
    """
    k, s = weights.shape[0], self.stride
    x = x.astype(self.opts.dtype)
    # One pass over the candidates creates every parameter (same paths and keys
    # whether or not the edges are computed next).
    plan = []   # (weight column, form, stacked params | per-edge module | None)
    convs = []  # (weight column, ConvCandidate, stacked params), run together
    for col, name in enumerate(self.primitives):
      if name == "none":  # contributes exactly zero
        continue
      form = batched_candidate(name)
      if isinstance(form, ConvCandidate):
        convs.append((col, form,
                      StackedParams(conv_candidate_leaves(form, self.C), k, name=name)()))
      elif form == "skip" and s != 1:
        if self.C % 2:
          raise ValueError(f"FactorizedReduce needs an even C_out, got {self.C}.")
        plan.append((col, "reduce",
                     StackedParams(factorized_reduce_leaves(self.C), k, name=name)()))
      elif form is None:
        plan.append((col, "per_edge", self._per_edge(name, k, train)))
      else:
        plan.append((col, form, None))
    zeros = lambda: jnp.zeros((k,) + x[:, ::s, ::s].shape[:3] + (self.C,), x.dtype)
    if self.is_initializing() and not self.opts.track_running_stats:
      # `init` needs the parameters, not the outputs: computing the edges
      # eagerly compiles one small XLA program per distinct op shape (~500 at
      # the quickstart's size, ~25 s on CPU). Per-edge modules create their
      # parameters when called.
      for _, form, module in plan:
        if form == "per_edge":
          module(x)
      return zeros()
    relu_x = nn.relu(x)  # every parametric candidate starts with it: once
    terms = []  # (weight column, (k or 1, N, Ho, Wo, C) output)
    for col, form, p in plan:
      if form in ("max", "avg"):
        y = ops.Pool(form, s)(x)
        terms.append((col, ops.BatchNorm(False, self.opts)(y, train)[None]))
      elif form == "skip":
        terms.append((col, x[None]))
      elif form == "reduce":
        terms.append((col, self._factorized_reduce(relu_x, p, train)))
      else:
        terms.append((col, p(x)))
    terms += self._conv_candidates(relu_x, convs, k, train)
    if not terms:  # every candidate is 'none'
      return zeros()
    out = 0.0
    for col, y in terms:
      out = out + weights[:, col, None, None, None, None].astype(y.dtype) * y
    # Materialise the mixed outputs: otherwise XLA fuses this weighted sum
    # into every node sum that reads a slice of it and recomputes it there.
    # XLA:CPU keeps the barrier only under `parallel.default_compiler_options()`
    # (small weight step: ~10% faster, compiled ~20% sooner than without it).
    return lax.optimization_barrier(out)

  def _per_edge(self, name, k, train):
    """The k copies of a candidate without a batched form, under nn.vmap."""
    return nn.vmap(_PerEdgeCandidate, variable_axes={"params": 0},
                   split_rngs={"params": True}, in_axes=None, out_axes=0,
                   axis_size=k)(name, self.C, self.stride, self.opts, train, name=name)

  def _factorized_reduce(self, relu_x, p, train):
    """k `ops.FactorizedReduce`s of one input (stacked params `p`) -> (k, N, H/2, W/2, C)."""
    # A 1x1 stride-2 conv without padding reads every other pixel.
    a = pointwise_shared_input(relu_x[:, ::2, ::2, :], p["Conv_0/kernel"])
    shifted = jnp.pad(relu_x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    b = pointwise_shared_input(shifted[:, ::2, ::2, :], p["Conv_1/kernel"])
    b = b[:, :, :a.shape[2], :a.shape[3]]
    return edge_batch_norm(self.opts)(jnp.concatenate([a, b], -1), train)

  def _conv_candidates(self, relu_x, convs, k, train):
    """Every sep/dil conv candidate on the k edges, layer by layer.

    Per layer the candidates still running are stacked on the edge axis, so
    their 1x1 convolutions are one batched matmul and their BatchNorms one
    (G = candidates x k groups): fewer, larger XLA ops. The depthwise
    convolutions stay one call per candidate (kernel sizes and dilations
    differ); the first reads the shared input.

    Args:
      convs: [(weight column, ConvCandidate, its stacked params)].

    Returns [(weight column, (k, N, Ho, Wo, C))].
    """
    if not convs:
      return []
    # Per-edge widths and sizes decide 'auto', as for MixedOp's convolutions
    # one by one (the same form, so the same numbers): the 'dense' form (and
    # the fused form's kernel gradient) cost C times a true depthwise
    # convolution whether the edges are batched or not.
    resolve = lambda shape: ops.resolve_depthwise(self.opts.depthwise, self.C,
                                                  shape[-4] * shape[-3] * shape[-2])
    impl = resolve(relu_x.shape)
    leaf = lambda i, layer, path: convs[i][2][_conv_layer_prefix(convs[i][1], layer) + path]
    dw = lambda i, layer: leaf(i, layer, "DepthwiseConv_0/conv/kernel")
    ys = [depthwise_shared_input(relu_x, dw(i, 0), self.stride, cand.padding,
                                 cand.dilation, impl)  # only the first layer strides
          for i, (_, cand, _) in enumerate(convs)]
    live, done, layer = list(range(len(convs))), {}, 0
    while live:
      y = jnp.concatenate([ys[i] for i in live]) if len(live) > 1 else ys[live[0]]
      w = [leaf(i, layer, "Conv_0/kernel") for i in live]
      y = pointwise_per_edge(y, jnp.concatenate(w) if len(w) > 1 else w[0])
      y = edge_batch_norm(self.opts)(y, train)
      nxt = []
      for n, i in enumerate(live):
        part = y[n * k:(n + 1) * k]
        cand = convs[i][1]
        if layer + 1 < cand.layers:
          ys[i] = depthwise_per_edge(nn.relu(part), dw(i, layer + 1), 1, cand.padding,
                                     cand.dilation, resolve(part.shape))
          nxt.append(i)
        else:
          done[i] = part
      live, layer = nxt, layer + 1
    return [(col, done[i]) for i, (col, _, _) in enumerate(convs)]


__all__ = [
    "ConvCandidate", "BATCHED_CANDIDATES", "batched_candidate", "SourceEdges",
    "StackedParams", "depthwise_shared_input", "depthwise_per_edge",
    "pointwise_per_edge", "pointwise_shared_input", "edge_batch_norm",
    "per_edge_init", "stacked_torch_init",
]
