"""`MultiChannelSpace`: MultiChannelNet behind the `SearchSpace` protocol ('multichannel').

The `model` block (defaults from sharp_darts.txt sec. 4.1 and the reference):

  min_channels (32: "n, m in [5..8]", scales 2^5 ..), num_scales (4: 32 ..
  256), layers (4 normal + reduction stage pairs, as the reference's published
  paths, whose networks have Table 4's sizes; the text's "((4x4)x3x3x2)"
  says 3),
  final_filters (768, the reference's final_linear_filters), primitives
  (('SharpSepConv', 'ResizablePool')), mixing ('softmax' | 'max_w' | ...),
  alpha_init_scale (1e-3, the reference's 1e-3 * randn), depthwise, dtype.

The genotype is the best path (`paths.best_path` of the mixed stage
weights): {'channels': [stem, stage 1, ...], 'primitives': [...], 'score'}.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jdarts import losses
from jdarts import mixing as mixing_lib
from jdarts import ops
from jdarts.config_lib import ConfigError
from jdarts.spaces.base import SPACES, SpaceBase, config_get, image_example_batch
from jdarts.spaces.hypercuboid import network as net_lib
from jdarts.spaces.hypercuboid import paths

DTYPES = ("float32", "bfloat16", "float64")


def _int(cfg, key, default, low):
  got = config_get(cfg, key, default)
  if isinstance(got, bool) or not isinstance(got, numbers.Integral) or got < low:
    raise ConfigError(f"model.{key}={got!r}; it must be an integer >= {low}.")
  return got


@SPACES.register("multichannel")
@dataclasses.dataclass
class MultiChannelSpace(SpaceBase):
  """MultiChannelNet bound to a config (see the module docstring)."""
  network: net_lib.MultiChannelNet
  alpha_init_scale: float = 1e-3
  image_shape: Tuple[int, ...] = (32, 32, 3)

  name = "multichannel"
  metric_names = ("accuracy",)

  @classmethod
  def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
    """One-line `ConfigError` naming the first bad key of the `model` block."""
    _int(model_cfg, "min_channels", 32, 1)
    _int(model_cfg, "num_scales", 4, 1)
    _int(model_cfg, "layers", 4, 1)
    _int(model_cfg, "final_filters", 768, 1)
    prims = config_get(model_cfg, "primitives", net_lib.PRIMITIVES)
    if isinstance(prims, str) or not prims or any(p not in net_lib.OPS for p in prims):
      raise ConfigError(f"model.primitives={prims!r}; it must be a non-empty list of "
                        f"{', '.join(net_lib.OPS.names())}.")
    mix = config_get(model_cfg, "mixing", "softmax")
    if mix not in mixing_lib.MIXINGS:
      raise ConfigError(f"model.mixing={mix!r} is unknown; choose one of "
                        f"{', '.join(mixing_lib.MIXINGS.names())}.")
    scale = config_get(model_cfg, "alpha_init_scale", 1e-3)
    if not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale < 0:
      raise ConfigError(f"model.alpha_init_scale={scale!r}; it must be a finite number >= 0.")
    if config_get(model_cfg, "dtype", "float32") not in DTYPES:
      raise ConfigError(f"model.dtype={config_get(model_cfg, 'dtype', None)!r}; choose one "
                        f"of {', '.join(DTYPES)}.")
    if config_get(model_cfg, "depthwise", "auto") not in ops.DEPTHWISE_IMPLS:
      raise ConfigError(f"model.depthwise={config_get(model_cfg, 'depthwise', None)!r}; "
                        f"choose one of {', '.join(ops.DEPTHWISE_IMPLS)}.")

  @classmethod
  def from_config(cls, model_cfg, info, *, bn_axis_name: Optional[str] = None):
    get = lambda k, d: config_get(model_cfg, k, d)
    c0, k = get("min_channels", 32), get("num_scales", 4)
    opts = ops.OpOptions(depthwise=get("depthwise", "auto"), bn_axis_name=bn_axis_name,
                         dtype=jnp.dtype(get("dtype", "float32")))
    net = net_lib.MultiChannelNet(
        scales=tuple(c0 * 2 ** i for i in range(k)), layers=get("layers", 4),
        primitives=tuple(get("primitives", net_lib.PRIMITIVES)),
        num_classes=int(info.num_classes), final_filters=get("final_filters", 768),
        mixing=get("mixing", "softmax"), opts=opts)
    return cls(net, float(get("alpha_init_scale", 1e-3)),
               tuple(int(d) for d in info.image_shape))

  @property
  def alpha_shape(self) -> Tuple[int, int, int, int]:
    """(layers, K, K, P) of each of alphas['normal'] and alphas['reduce']."""
    K = len(self.network.scales)
    return (self.network.layers, K, K, len(self.network.primitives))

  def example_batch(self, batch_size: int):
    return image_example_batch(batch_size, self.image_shape)

  def init(self, rng, batch):
    net = self.network.clone(opts=dataclasses.replace(self.network.opts, bn_axis_name=None))
    return net.init(rng, batch["image"], self.init_alphas(jax.random.PRNGKey(0)))["params"]

  def init_alphas(self, rng):
    k1, k2 = jax.random.split(rng)
    s = self.alpha_init_scale
    return {"normal": s * jax.random.normal(k1, self.alpha_shape),
            "reduce": s * jax.random.normal(k2, self.alpha_shape)}

  def loss(self, params, alphas, batch, rng, carry):
    """Cross-entropy of the supernet: (loss, {'loss', 'accuracy', 'count'}, carry)."""
    del rng
    logits = self.network.apply({"params": params}, batch["image"], alphas, True)
    loss, aux = losses.cross_entropy(logits, batch["label"], batch.get("mask"))
    return loss, aux, carry

  def derive(self, alphas) -> Dict[str, Any]:
    """The path of maximal total mixed weight (sec. 4.1), by dynamic programming."""
    w = np.asarray(net_lib.stage_weights(
        {k: jnp.asarray(v) for k, v in alphas.items()}, self.network.mixing))
    best = paths.best_path(w)
    return {"channels": [int(self.network.scales[i]) for i in best.scales],
            "primitives": [self.network.primitives[p] for p in best.primitives],
            "score": best.score}

  def format_genotype(self, genotype) -> str:
    parts = [str(genotype["channels"][0])]
    for s, (p, c) in enumerate(zip(genotype["primitives"], genotype["channels"][1:])):
      parts.append(f"-{p}{'/2' if s % 2 else ''}-> {c}")
    return " ".join(parts) + f" (score {genotype['score']:.4f})"


def path_network(genotype: Mapping[str, Sequence[Any]], num_classes: int,
                 final_filters: int = 768, **kw) -> net_lib.MultiChannelPathNet:
  """The discrete network of a derived path (`MultiChannelSpace.derive`'s dict)."""
  return net_lib.MultiChannelPathNet(tuple(genotype["channels"]), tuple(genotype["primitives"]),
                                     num_classes, final_filters, **kw)


__all__ = ["MultiChannelSpace", "path_network"]
