"""The DARTS convolutional search space (paper sec. 2.1, A.1.1).

A supernet of `layers` cells (reduction cells at layers // 3 and 2 * layers // 3)
whose every edge is a mixed operation over `PRIMITIVES`. The architecture is two
arrays, `alphas = {'normal': (14, 8), 'reduce': (14, 8)}` for 4 intermediate
nodes, passed to `apply` and never stored in the network.

Reference layout (quark0/darts `cnn/model_search.py`), in NHWC:
stem 3x3 conv to 3C + BN (affine, batch statistics) -> cells -> global average
pool -> linear classifier. Cell inputs are preprocessed by ReLU-1x1conv-BN (or
FactorizedReduce after a reduction cell); the cell output concatenates the
last `multiplier` intermediate nodes.

`Network(batch_edges=True)` (config `model.batch_edges`) computes each cell per
source state (`BatchedSearchCell`): the same function with fewer, larger ops
and the parameters in the layout of `to_batched_params`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdarts import batched_ops
from jdarts import genotypes as genotypes_lib
from jdarts import mixing
from jdarts import ops
from jdarts.spaces.base import SPACES, config_get

PRIMITIVES = genotypes_lib.PRIMITIVES


def num_edges(steps: int) -> int:
  """Edges of a cell with `steps` intermediate nodes: 2 + 3 + ... = 14 for 4."""
  return sum(2 + i for i in range(steps))


def edges_from_source(j: int, steps: int):
  """(target node, edge index) of the edges leaving state j (0: s0, 1: s1, 2 + i: node i).

  Node i reads states 0 .. i + 1 through edges offset_i + 0 .. offset_i + i + 1,
  offset_i = 2 + 3 + ... (i terms), the alpha row order of the reference.
  """
  return [(i, num_edges(i) + j) for i in range(max(0, j - 1), steps)]


class MixedOp(nn.Module):
  """Weighted sum of every candidate operation on one edge (paper eq. 2).

  Called with x: (N, H, W, C) and weights: (num_ops,), returns
  (N, H / stride, W / stride, C). 'none' contributes exactly zero, so it is not
  computed; pooling is followed by a non-affine BN as in the reference.
  """
  C: int
  stride: int
  primitives: Sequence[str]
  opts: ops.OpOptions

  @nn.compact
  def __call__(self, x, weights, train: bool = True):
    out = 0.0
    for k, name in enumerate(self.primitives):
      if name == "none":
        continue
      y = ops.make_op(name, self.C, self.stride, False, self.opts)(x, train)
      if "pool" in name:
        y = ops.BatchNorm(False, self.opts)(y, train)
      out = out + weights[k].astype(y.dtype) * y
    if isinstance(out, float):  # every candidate is 'none'
      out = jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])
    return out


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

  @nn.compact
  def __call__(self, s0, s1, weights, train: bool = True):
    s0, s1 = _preprocess(self.C, self.reduction_prev, self.opts, s0, s1, train)
    states = [s0, s1]
    offset = 0
    for _ in range(self.steps):
      node = 0.0
      for j, h in enumerate(states):
        stride = 2 if self.reduction and j < 2 else 1
        node = node + MixedOp(self.C, stride, tuple(self.primitives), self.opts)(
            h, weights[offset + j], train)
      offset += len(states)
      states.append(node)
    return jnp.concatenate(states[-self.multiplier:], axis=-1)


def _preprocess(C, reduction_prev, opts, s0, s1, train):
  """Both cells' input preprocessing; called inside a cell, so named in its scope."""
  if reduction_prev:
    s0 = ops.FactorizedReduce(C, False, opts)(s0, train)
  else:
    s0 = ops.ReLUConvBN(C, 1, 1, 0, False, opts)(s0, train)
  s1 = ops.ReLUConvBN(C, 1, 1, 0, False, opts)(s1, train)
  return s0, s1


class BatchedSearchCell(nn.Module):
  """`SearchCell` computed per source state instead of per edge (same results).

  The edges leaving a state share its input and stride, so
  `batched_ops.SourceEdges` computes all of them at once (parameter-free
  candidates shared, one call per candidate and layer for the parametric
  ones); each node then sums the slices of its incoming edges. Parameters: the
  preprocessing as in `SearchCell`, and `source_<j>/<primitive>/...` holding
  the per-edge parameters of the edges leaving state j stacked in target
  order (`to_batched_params`). States: 0 = s0, 1 = s1, 2 + i = node i; the
  last node has no outgoing edge.

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
    s0, s1 = _preprocess(self.C, self.reduction_prev, self.opts, s0, s1, train)
    states = [s0, s1]
    incoming = [[] for _ in range(self.steps)]  # node i's edge outputs
    for j in range(self.steps + 1):
      if j >= 2:  # every edge into node j - 2 comes from states < j: complete
        states.append(sum(incoming[j - 2]))
      targets = edges_from_source(j, self.steps)
      stride = 2 if self.reduction and j < 2 else 1
      y = batched_ops.SourceEdges(self.C, stride, tuple(self.primitives), self.opts,
                                  name=f"source_{j}")(
          states[j], weights[np.array([e for _, e in targets])], train)
      for t, (i, _) in enumerate(targets):
        incoming[i].append(y[:, :, :, t, :])
    states.append(sum(incoming[-1]))
    return jnp.concatenate(states[-self.multiplier:], axis=-1)


class Network(nn.Module):
  """The DARTS search supernet: (N, H, W, C_in) images -> (N, num_classes) logits."""
  C: int = 16
  num_classes: int = 10
  layers: int = 8
  steps: int = 4
  multiplier: int = 4
  stem_multiplier: int = 3
  primitives: Sequence[str] = PRIMITIVES
  mixing: str = "softmax"
  remat: bool = False
  opts: ops.OpOptions = ops.OpOptions()
  # Per-source edge batching (BatchedSearchCell): same function, params in
  # the layout of `to_batched_params`.
  batch_edges: bool = False

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
    cell_cls = BatchedSearchCell if self.batch_edges else SearchCell
    if self.remat:
      cell_cls = nn.remat(cell_cls, static_argnums=(4,))
    C_curr = self.C
    reduction_prev = False
    for i in range(self.layers):
      reduction = i in (self.layers // 3, 2 * self.layers // 3)
      if reduction:
        C_curr *= 2
      cell = cell_cls(C_curr, reduction, reduction_prev, tuple(self.primitives),
                      opts, self.steps, self.multiplier, name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, w_reduce if reduction else w_normal, train)
      reduction_prev = reduction
    out = jnp.mean(s1.astype(jnp.promote_types(s1.dtype, jnp.float32)), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=ops.torch_default_init,
                    bias_init=_torch_bias_init(out.shape[-1]), name="classifier")(out)


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
  each candidate, then a BatchNorm after each pooling. Call outside any module.
  """
  names, seen = {}, {}

  def take(cls):
    seen[cls] = seen.get(cls, 0) + 1
    return f"{cls}_{seen[cls] - 1}"
  for p in primitives:
    if p == "none":
      continue
    names[p] = take(type(ops.make_op(p, C, stride, False, opts)).__name__)
    if "pool" in p:
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


def _torch_bias_init(fan_in):
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def cross_entropy(logits, labels, mask=None, label_smoothing: float = 0.0):
  """Mean cross-entropy and accuracy of (N, K) logits against (N,) int labels.

  Rows with mask 0 (padding in evaluation batches) are left out. Returns
  (loss, aux) with aux = {'loss', 'accuracy', 'count'} as float32 scalars.
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  per_example = optax.softmax_cross_entropy(logits, onehot)
  correct = (jnp.argmax(logits, -1) == labels).astype(logits.dtype)
  if mask is None:
    mask = jnp.ones_like(per_example)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  loss = jnp.sum(per_example * mask) / count
  acc = jnp.sum(correct * mask) / count
  return loss, {"loss": loss, "accuracy": acc, "count": jnp.sum(mask)}


@SPACES.register("darts_cnn")
@dataclasses.dataclass
class DartsCNNSpace:
  """The DARTS CNN search space bound to a config (see `from_config`).

  Attributes:
    network: the Flax supernet.
    steps, multiplier: cell shape (4 nodes, concat of 4 in the paper).
    primitives: candidate operation names, in alpha column order.
    alpha_init_scale: std of the alphas' initial noise (0: zeros, as the paper).
  """
  network: Network
  steps: int = 4
  multiplier: int = 4
  primitives: Sequence[str] = PRIMITIVES
  alpha_init_scale: float = 0.0
  name: str = "darts_cnn"
  image_shape: tuple = (32, 32, 3)

  @property
  def alpha_shape(self):
    return (num_edges(self.steps), len(self.primitives))

  def init(self, rng, batch) -> Dict[str, Any]:
    """Initial weights; `batch['image']`: (N, H, W, C) sets the input shape."""
    alphas = self.init_alphas(jax.random.PRNGKey(0))
    # Initialisation runs outside any device map, where a BatchNorm axis name
    # is unbound; the parameters do not depend on it.
    net = self.network.clone(opts=dataclasses.replace(self.network.opts, bn_axis_name=None))
    return net.init(rng, batch["image"], alphas)["params"]

  def init_alphas(self, rng) -> Dict[str, jnp.ndarray]:
    """{'normal', 'reduce'}: (num_edges, num_ops) arrays, zeros or small noise."""
    k1, k2 = jax.random.split(rng)
    shape, s = self.alpha_shape, self.alpha_init_scale
    return {"normal": s * jax.random.normal(k1, shape),
            "reduce": s * jax.random.normal(k2, shape)}

  def apply(self, params, alphas, batch, train: bool = True):
    """(N, H, W, C) images in `batch['image']` -> (N, num_classes) logits."""
    self.check_alphas(alphas)
    return self.network.apply({"params": params}, batch["image"], alphas, train)

  metric_names = ("accuracy",)

  def example_batch(self, batch_size: int):
    """{'image': (B, H, W, C) float32, 'label': (B,) int32} zeros."""
    return {"image": jnp.zeros((batch_size,) + tuple(self.image_shape), jnp.float32),
            "label": jnp.zeros((batch_size,), jnp.int32)}

  def init_carry(self, batch_size: int):
    del batch_size
    return None

  def loss(self, params, alphas, batch, rng=None, carry=None):
    """Cross-entropy of the supernet on `batch`; returns (loss, aux, carry).

    `rng` is unused: the DARTS search network has no dropout or drop-path.
    """
    del rng
    logits = self.apply(params, alphas, batch)
    loss, aux = cross_entropy(logits, batch["label"], batch.get("mask"))
    return loss, aux, carry

  def summarize(self, means):
    return dict(means)

  @classmethod
  def validate_config(cls, model_cfg):
    from jdarts.config_lib import ConfigError
    for p in config_get(model_cfg, "primitives", PRIMITIVES):
      if p not in ops.OPS:
        raise ConfigError(f"model.primitives has unknown operation {p!r}; known: "
                          f"{', '.join(ops.OPS.names())}.")
    d = config_get(model_cfg, "depthwise", "auto")
    if d not in ops.DEPTHWISE_IMPLS:
      raise ConfigError(f"model.depthwise={d!r}; choose one of {ops.DEPTHWISE_IMPLS}.")

  @classmethod
  def from_config(cls, model_cfg, info, *, bn_axis_name=None):
    cfg = dict(model_cfg)
    cfg["num_classes"] = info.num_classes
    cfg["bn_axis_name"] = bn_axis_name
    space = from_config(cfg)
    space.image_shape = tuple(info.image_shape)
    return space

  def check_alphas(self, alphas):
    for key in ("normal", "reduce"):
      if key not in alphas:
        raise ValueError(f"alphas must have keys 'normal' and 'reduce'; got {sorted(alphas)}.")
      if tuple(alphas[key].shape) != self.alpha_shape:
        raise ValueError(f"alphas[{key!r}] has shape {tuple(alphas[key].shape)}; this "
                         f"space needs {self.alpha_shape} (edges, operations).")

  def derive(self, alphas):
    """The discrete genotype of paper sec. 2.4 for the given alphas."""
    return genotypes_lib.derive(np.asarray(alphas["normal"]), np.asarray(alphas["reduce"]),
                                tuple(self.primitives), steps=self.steps,
                                multiplier=self.multiplier)

  def genotype_json(self, genotype) -> Dict[str, Any]:
    return genotypes_lib.genotype_to_json(genotype)

  def format_genotype(self, genotype) -> str:
    return genotypes_lib.format_genotype(genotype)


def from_config(cfg) -> DartsCNNSpace:
  """Builds the space from a `config.model`-like mapping.

  Keys: init_channels (C), layers, num_classes, steps, multiplier,
  stem_multiplier, primitives, mixing, alpha_init_scale, depthwise, remat,
  batch_edges (compute the edges per source state, `BatchedSearchCell`; the
  params then have the `to_batched_params` layout), dtype ('float32' |
  'bfloat16'), bn_axis_name.
  """
  get = lambda k, d: cfg.get(k, d) if hasattr(cfg, "get") else getattr(cfg, k, d)
  primitives = tuple(get("primitives", PRIMITIVES))
  for p in primitives:
    ops.OPS.get(p)  # fails early, with the list of known operations
  opts = ops.OpOptions(depthwise=get("depthwise", "auto"),
                       bn_axis_name=get("bn_axis_name", None),
                       dtype=jnp.dtype(get("dtype", "float32")))
  steps, multiplier = get("steps", 4), get("multiplier", 4)
  net = Network(C=get("init_channels", 16), num_classes=get("num_classes", 10),
                layers=get("layers", 8), steps=steps, multiplier=multiplier,
                stem_multiplier=get("stem_multiplier", 3), primitives=primitives,
                mixing=get("mixing", "softmax"), remat=get("remat", False), opts=opts,
                batch_edges=bool(get("batch_edges", False)))
  mixing.MIXINGS.get(net.mixing)
  return DartsCNNSpace(net, steps, multiplier, primitives,
                       get("alpha_init_scale", 0.0))
