"""`DartsCNNSpace`: the DARTS convolutional search space behind the `SearchSpace` protocol.

Registered as 'darts_cnn' (`config.space`). The `model` block it reads, with
the paper's values as defaults (sec. 2.1, A.1.1):

  init_channels (C, 16), layers (8), steps (intermediate nodes, 4),
  multiplier (nodes concatenated into a cell's output, 4), stem_multiplier (3),
  primitives (candidate names in `primitives.OPS`, alpha column order),
  mixing ('softmax' | 'sigmoid' | 'max_w' | any of `jdarts.mixing.MIXINGS`),
  alpha_init ('zeros' | 'uniform_weights' | a number: the initial logit,
  `jdarts.mixing.initial_logit`; Single-DARTS sec. 4 starts sigmoid alphas
  at -ln(|O| - 1)), alpha_init_scale (std of the initial alphas' noise;
  0: none),
  depthwise (`jdarts.ops.DEPTHWISE_IMPLS`), dtype ('float32' | 'bfloat16' |
  'float64'), remat (recompute cells in the backward pass: less memory, one
  more forward pass per step; on XLA:CPU only in programs compiled with
  `jdarts.parallel.default_compiler_options()`, as every jdarts step is), batch_edges
  (compute edges per source state, `cells.BatchedSearchCell`; params in the
  `network.to_batched_params` layout), init ('pytorch', modern PyTorch's
  default initialisation, or 'pytorch0.3', that of the PyTorch quark0/darts
  ran on: `jdarts.ops.conv_init`).

The image shape and the number of classes come from the dataset (`info`).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jdarts import genotypes as genotypes_lib
from jdarts import losses
from jdarts import mixing
from jdarts import ops
from jdarts.config_lib import ConfigError
from jdarts.spaces.base import SPACES, SpaceBase, config_get, image_example_batch
from jdarts.spaces.darts_cnn import derive as derive_lib
from jdarts.spaces.darts_cnn import primitives as primitives_lib
from jdarts.spaces.darts_cnn.cells import num_edges
from jdarts.spaces.darts_cnn.network import Network

PRIMITIVES = primitives_lib.PRIMITIVES
DTYPES = ("float32", "bfloat16", "float64")


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _check_int(cfg, key: str, default: int, low: int, high: Optional[int] = None,
               high_name: str = "") -> int:
  """`cfg[key]` if it is an int in [low, high]; else a one-line ConfigError."""
  got = config_get(cfg, key, default)
  if not _is_int(got) or got < low or (high is not None and got > high):
    want = f"an integer >= {low}" if high is None else f"an integer in {low}..{high_name}"
    raise ConfigError(f"model.{key}={got!r}; it must be {want}.")
  return got


def _did_you_mean(name, choices) -> str:
  close = difflib.get_close_matches(str(name), list(choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _check_primitives(cfg, registry=None, default=PRIMITIVES) -> None:
  registry = primitives_lib.OPS if registry is None else registry
  got = config_get(cfg, "primitives", default)
  if isinstance(got, (str, bytes)) or not isinstance(got, Sequence) or not got:
    raise ConfigError(f"model.primitives={got!r}; it must be a non-empty list of operation "
                      f"names, e.g. {tuple(default)}.")
  for p in got:
    if p not in registry:
      hint = _did_you_mean(p, registry.names())
      raise ConfigError(f"model.primitives has unknown operation {p!r}{hint}; known: "
                        f"{', '.join(registry.names())}.")
  repeated = sorted({p for p in got if list(got).count(p) > 1})
  if repeated:
    raise ConfigError(f"model.primitives={tuple(got)!r} repeats {', '.join(repeated)}; "
                      "each operation may appear once (one alpha column each).")
  if all(p == "none" for p in got):
    raise ConfigError(f"model.primitives={tuple(got)!r} has no operation besides 'none'; "
                      "a cell needs one to derive.")


@SPACES.register("darts_cnn")
@dataclasses.dataclass
class DartsCNNSpace(SpaceBase):
  """The DARTS CNN search space bound to a config (see `from_config`).

  Attributes:
    network: the Flax supernet.
    steps, multiplier: cell shape (4 nodes, concat of 4 in the paper).
    primitives: candidate operation names, in alpha column order.
    alpha_init_scale: std of the alphas' initial noise (0: zeros, as the paper).
    image_shape: (H, W, C) of the images the space consumes.
  """
  network: Network
  steps: int = 4
  multiplier: int = 4
  primitives: Sequence[str] = PRIMITIVES
  alpha_init_scale: float = 0.0
  image_shape: Tuple[int, ...] = (32, 32, 3)
  alpha_init: Any = "zeros"

  name = "darts_cnn"
  metric_names = ("accuracy",)
  eval_model = {"name": "cifar"}  # the paper's CIFAR-10 network (sec. 3.2: C=36, 20 cells)
  # The op namespace and default candidates. A space with the same cell
  # structure over other operations (jdarts.spaces.sharp) subclasses this one
  # and sets both; None is `primitives.OPS`.
  op_registry = None
  default_primitives: Tuple[str, ...] = PRIMITIVES

  # -- construction ----------------------------------------------------------

  @classmethod
  def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
    """Raises `ConfigError` with one line naming the first bad key of the `model` block."""
    _check_int(model_cfg, "init_channels", 16, 1)
    _check_int(model_cfg, "layers", 8, 1)
    steps = _check_int(model_cfg, "steps", 4, 1)
    _check_int(model_cfg, "multiplier", 4, 1, steps, f"steps={steps}")
    _check_int(model_cfg, "stem_multiplier", 3, 1)
    _check_primitives(model_cfg, cls.op_registry, cls.default_primitives)
    if cls.op_registry is not None and config_get(model_cfg, "batch_edges", False):
      raise ConfigError(f"model.batch_edges=True is only for the darts_cnn space's "
                        f"operations; set it False for space {cls.name!r}.")
    mix = config_get(model_cfg, "mixing", "softmax")
    if mix not in mixing.MIXINGS:
      raise ConfigError(f"model.mixing={mix!r} is unknown"
                        f"{_did_you_mean(mix, mixing.MIXINGS.names())}; choose one of "
                        f"{', '.join(mixing.MIXINGS.names())}.")
    dtype = config_get(model_cfg, "dtype", "float32")
    if dtype not in DTYPES:
      raise ConfigError(f"model.dtype={dtype!r}; choose one of {', '.join(DTYPES)}.")
    depthwise = config_get(model_cfg, "depthwise", "auto")
    if depthwise not in ops.DEPTHWISE_IMPLS:
      raise ConfigError(f"model.depthwise={depthwise!r}; choose one of "
                        f"{', '.join(ops.DEPTHWISE_IMPLS)}.")
    ops.check_init(config_get(model_cfg, "init", "pytorch"))
    if config_get(model_cfg, "init", "pytorch") != "pytorch" and config_get(
        model_cfg, "batch_edges", False):
      raise ConfigError("model.init='pytorch0.3' is not implemented with model.batch_edges=True; "
                        "set model.batch_edges=False.")
    init = config_get(model_cfg, "alpha_init", "zeros")
    try:
      mixing.initial_logit(init, mix, len(config_get(model_cfg, "primitives", PRIMITIVES)))
    except ValueError as e:
      raise ConfigError(f"model.alpha_init={init!r}: {e}.") from None
    scale = config_get(model_cfg, "alpha_init_scale", 0.0)
    if (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or
        not math.isfinite(scale) or scale < 0):
      raise ConfigError(f"model.alpha_init_scale={scale!r}; it must be a finite number "
                        ">= 0 (0: zeros, as the paper; the reference uses 1e-3).")

  @classmethod
  def from_config(cls, model_cfg: Mapping[str, Any], info: Any, *,
                  bn_axis_name: Optional[str] = None) -> "DartsCNNSpace":
    """Builds the space from the `model` block (module docstring) and the dataset.

    Args:
      model_cfg: the `model` block (dict or ConfigDict).
      info: the dataset's description: `num_classes` and `image_shape` (H, W, C),
        e.g. a `jdarts.data.DatasetInfo`.
      bn_axis_name: the device axis to average BatchNorm moments over, or None.
    """
    def get(key, default):
      return config_get(model_cfg, key, default)
    primitives = tuple(get("primitives", cls.default_primitives))
    opts = ops.OpOptions(depthwise=get("depthwise", "auto"), bn_axis_name=bn_axis_name,
                         dtype=jnp.dtype(get("dtype", "float32")), init=get("init", "pytorch"))
    steps, multiplier = get("steps", 4), get("multiplier", 4)
    remat = bool(get("remat", False))
    net = Network(C=get("init_channels", 16), num_classes=int(info.num_classes),
                  layers=get("layers", 8), steps=steps, multiplier=multiplier,
                  stem_multiplier=get("stem_multiplier", 3), primitives=primitives,
                  mixing=get("mixing", "softmax"), remat=remat,
                  opts=opts, batch_edges=bool(get("batch_edges", False)),
                  op_registry=cls.op_registry)
    return cls(net, steps, multiplier, primitives, float(get("alpha_init_scale", 0.0)),
               tuple(int(d) for d in info.image_shape), get("alpha_init", "zeros"))

  # -- the protocol ----------------------------------------------------------

  @property
  def alpha_shape(self) -> Tuple[int, int]:
    """(num_edges, num_ops) of each of alphas['normal'] and alphas['reduce']."""
    return (num_edges(self.steps), len(self.primitives))

  def example_batch(self, batch_size: int) -> Dict[str, jnp.ndarray]:
    """{'image': (B, H, W, C) float32 zeros, 'label': (B,) int32 zeros}."""
    return image_example_batch(batch_size, self.image_shape)

  def init(self, rng, batch) -> Dict[str, Any]:
    """Initial weights; `batch['image']`: (N, H, W, C) sets the input shape."""
    alphas = self.init_alphas(jax.random.PRNGKey(0))
    # Initialisation runs outside any device map, where a BatchNorm axis name
    # is unbound; the parameters do not depend on it.
    net = self.network.clone(opts=dataclasses.replace(self.network.opts, bn_axis_name=None))
    return net.init(rng, batch["image"], alphas)["params"]

  def init_alphas(self, rng) -> Dict[str, jnp.ndarray]:
    """{'normal', 'reduce'}: (num_edges, num_ops) arrays: the initial logit plus small noise."""
    k1, k2 = jax.random.split(rng)
    shape, s = self.alpha_shape, self.alpha_init_scale
    base = mixing.initial_logit(self.alpha_init, self.network.mixing, len(self.primitives))
    return {"normal": base + s * jax.random.normal(k1, shape),
            "reduce": base + s * jax.random.normal(k2, shape)}

  def apply(self, params, alphas, batch, train: bool = True):
    """(N, H, W, C) images in `batch['image']` -> (N, num_classes) logits."""
    self.check_alphas(alphas)
    return self.network.apply({"params": params}, batch["image"], alphas, train)

  def loss(self, params, alphas, batch, rng, carry):
    """Cross-entropy of the supernet on `batch`: (loss, aux, carry).

    aux: {'loss', 'accuracy', 'count'} over the rows with `batch['mask']`
    nonzero (all rows without a mask). `rng` is unused: the DARTS search
    supernet has no dropout or drop-path (paper A.1.1). `carry` (None for
    this feed-forward space) is returned unchanged.
    """
    del rng
    logits = self.apply(params, alphas, batch)
    loss, aux = losses.cross_entropy(logits, batch["label"], batch.get("mask"))
    return loss, aux, carry

  def check_alphas(self, alphas) -> None:
    """Raises ValueError unless alphas has 'normal' and 'reduce' of `alpha_shape`."""
    for key in ("normal", "reduce"):
      if key not in alphas:
        raise ValueError(f"alphas must have keys 'normal' and 'reduce'; got {sorted(alphas)}.")
      if tuple(alphas[key].shape) != self.alpha_shape:
        raise ValueError(f"alphas[{key!r}] has shape {tuple(alphas[key].shape)}; this "
                         f"space needs {self.alpha_shape} (edges, operations).")

  def derive(self, alphas) -> genotypes_lib.Genotype:
    """The discrete genotype of paper sec. 2.4, ranked by this space's mixing."""
    return derive_lib.derive(np.asarray(alphas["normal"]), np.asarray(alphas["reduce"]),
                             tuple(self.primitives), steps=self.steps,
                             multiplier=self.multiplier, mixing=self.network.mixing)

  def genotype_json(self, genotype) -> Dict[str, Any]:
    return genotypes_lib.genotype_to_json(genotype)

  def format_genotype(self, genotype) -> str:
    return genotypes_lib.format_genotype(genotype)

  def genotype_stats(self, genotype) -> Dict[str, float]:
    """Skip-connections and parameter-free operations per cell (the `OpInfo` metadata)."""
    out = {}
    for cell in ("normal", "reduce"):
      names = [op for op, _ in getattr(genotype, cell)]
      out[f"{cell}_num_skip_connect"] = float(names.count("skip_connect"))
      out[f"{cell}_num_parameter_free"] = float(sum(
          primitives_lib.op_info(op, self.op_registry).parameter_free for op in names))
    return out

  def summarize(self, means: Dict[str, float]) -> Dict[str, float]:
    """The count-weighted means themselves: loss and accuracy need no transform."""
    return dict(means)


__all__ = ["DartsCNNSpace", "DTYPES"]
