"""`NB201Space`: the NAS-Bench-201 search space behind the `SearchSpace` protocol.

Registered as 'nb201' (`config.space`). The `model` block it reads, with the
benchmark's values as defaults (Dong & Yang 2020; Single-DARTS App. B):

  init_channels (C, 16), cells_per_stage (N, 5), primitives (names in
  `genotype.PRIMITIVES`, the alpha column order), mixing ('softmax' |
  'sigmoid' | any of `jdarts.mixing.MIXINGS`), alpha_init ('zeros' |
  'uniform_weights' | a number; `jdarts.mixing.initial_logit`),
  alpha_init_scale (std of noise added to the initial alphas; the reference
  uses 1e-3), dtype ('float32' | 'bfloat16' | 'float64').

alphas = {'cell': (6, 5)}: one array shared by all 15 cells. Genotypes are
`genotype.Arch`; genotype.json holds {'arch': '|op~0|+...'} and the operation
counts (skip connections, parameter-free edges).
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
from jdarts import mixing
from jdarts import ops
from jdarts.config_lib import ConfigError
from jdarts.spaces.base import SPACES, SpaceBase, config_get, image_example_batch
from jdarts.spaces.nb201 import genotype as genotype_lib
from jdarts.spaces.nb201.network import SearchNetwork

DTYPES = ("float32", "bfloat16", "float64")


def _check_int(cfg, key: str, default: int) -> int:
  got = config_get(cfg, key, default)
  if isinstance(got, bool) or not isinstance(got, numbers.Integral) or got < 1:
    raise ConfigError(f"model.{key}={got!r}; it must be an integer >= 1.")
  return got


def check_alpha_init(cfg, num_ops: int) -> None:
  """One-line ConfigError for a bad `model.alpha_init` / `alpha_init_scale` (any space)."""
  mix = config_get(cfg, "mixing", "softmax")
  init = config_get(cfg, "alpha_init", "zeros")
  try:
    mixing.initial_logit(init, mix, num_ops)
  except ValueError as e:
    raise ConfigError(f"model.alpha_init={init!r}: {e}.") from None
  scale = config_get(cfg, "alpha_init_scale", 0.0)
  if (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or
      not math.isfinite(scale) or scale < 0):
    raise ConfigError(f"model.alpha_init_scale={scale!r}; it must be a finite number >= 0 "
                      "(0: no noise; the reference uses 1e-3).")


@SPACES.register("nb201")
@dataclasses.dataclass
class NB201Space(SpaceBase):
  """The NAS-Bench-201 space bound to a config (see `from_config`).

  Attributes:
    network: the Flax supernet.
    primitives: candidate names, in alpha column order.
    alpha_init: 'zeros' | 'uniform_weights' | a number (`mixing.initial_logit`).
    alpha_init_scale: std of the initial alphas' noise.
    image_shape: (H, W, C) of the images.
  """
  network: SearchNetwork
  primitives: Sequence[str] = genotype_lib.PRIMITIVES
  alpha_init: Any = "zeros"
  alpha_init_scale: float = 0.0
  image_shape: Tuple[int, ...] = (32, 32, 3)

  name = "nb201"
  metric_names = ("accuracy",)
  # NAS-Bench-201's network (sec. 2.1: C=16, N=5 cells per stage).
  eval_model = {"name": "nb201", "init_channels": 16, "cells_per_stage": 5}

  @classmethod
  def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
    """Raises `ConfigError` with one line naming the first bad key of the `model` block."""
    _check_int(model_cfg, "init_channels", 16)
    _check_int(model_cfg, "cells_per_stage", 5)
    prims = config_get(model_cfg, "primitives", genotype_lib.PRIMITIVES)
    if (isinstance(prims, str) or not isinstance(prims, Sequence) or not prims or
        any(p not in genotype_lib.PRIMITIVES for p in prims) or len(set(prims)) != len(prims)):
      raise ConfigError(f"model.primitives={prims!r}; it must list distinct NB201 operations "
                        f"from {', '.join(genotype_lib.PRIMITIVES)}.")
    mix = config_get(model_cfg, "mixing", "softmax")
    if mix not in mixing.MIXINGS:
      raise ConfigError(f"model.mixing={mix!r} is unknown; choose one of "
                        f"{', '.join(mixing.MIXINGS.names())}.")
    check_alpha_init(model_cfg, len(prims))
    dtype = config_get(model_cfg, "dtype", "float32")
    if dtype not in DTYPES:
      raise ConfigError(f"model.dtype={dtype!r}; choose one of {', '.join(DTYPES)}.")

  @classmethod
  def from_config(cls, model_cfg: Mapping[str, Any], info: Any, *,
                  bn_axis_name: Optional[str] = None) -> "NB201Space":
    """Builds the space from the `model` block and the dataset (`num_classes`, `image_shape`)."""
    def get(key, default):
      return config_get(model_cfg, key, default)
    opts = ops.OpOptions(bn_axis_name=bn_axis_name, dtype=jnp.dtype(get("dtype", "float32")))
    prims = tuple(get("primitives", genotype_lib.PRIMITIVES))
    net = SearchNetwork(C=get("init_channels", 16), N=get("cells_per_stage", 5),
                        num_classes=int(info.num_classes), primitives=prims,
                        mixing=get("mixing", "softmax"), opts=opts)
    return cls(net, prims, get("alpha_init", "zeros"), float(get("alpha_init_scale", 0.0)),
               tuple(int(d) for d in info.image_shape))

  @property
  def alpha_shape(self) -> Tuple[int, int]:
    return (len(genotype_lib.EDGES), len(self.primitives))

  def example_batch(self, batch_size: int) -> Dict[str, jnp.ndarray]:
    """{'image': (B, H, W, C) float32 zeros, 'label': (B,) int32 zeros}."""
    return image_example_batch(batch_size, self.image_shape)

  def init(self, rng, batch):
    """Initial weights for `batch['image']`: (N, H, W, C)."""
    net = self.network.clone(opts=dataclasses.replace(self.network.opts, bn_axis_name=None))
    return net.init(rng, batch["image"], self.init_alphas(jax.random.PRNGKey(0))["cell"])[
        "params"]

  def init_alphas(self, rng) -> Dict[str, jnp.ndarray]:
    """{'cell': (6, num_ops)}: the mixing's initial logit plus optional noise."""
    base = mixing.initial_logit(self.alpha_init, self.network.mixing, len(self.primitives))
    noise = self.alpha_init_scale * jax.random.normal(rng, self.alpha_shape)
    return {"cell": base + noise}

  def apply(self, params, alphas, batch, train: bool = True):
    """(N, H, W, C) images -> (N, num_classes) logits."""
    a = alphas["cell"]
    if tuple(a.shape) != self.alpha_shape:
      raise ValueError(f"alphas['cell'] has shape {tuple(a.shape)}; this space needs "
                       f"{self.alpha_shape} (edges, operations).")
    return self.network.apply({"params": params}, batch["image"], a, train)

  def loss(self, params, alphas, batch, rng, carry):
    """Cross-entropy of the supernet on `batch`: (loss, aux, carry); rng unused."""
    del rng
    logits = self.apply(params, alphas, batch)
    loss, aux = losses.cross_entropy(logits, batch["label"], batch.get("mask"))
    return loss, aux, carry

  def derive(self, alphas) -> genotype_lib.Arch:
    """Argmax per edge of the weights of this space's mixing ('none' allowed)."""
    return genotype_lib.derive(np.asarray(alphas["cell"]), self.primitives,
                               self.network.mixing)

  def genotype_json(self, genotype) -> Dict[str, Any]:
    return {"arch": genotype_lib.arch_to_str(genotype), **genotype_lib.count_ops(genotype)}

  def format_genotype(self, genotype) -> str:
    return genotype_lib.arch_to_str(genotype)

  def genotype_stats(self, genotype) -> Dict[str, float]:
    """Skip-connections and parameter-free edges of the cell (`count_ops`)."""
    counts = genotype_lib.count_ops(genotype)
    return {"num_skip_connect": float(counts["skip_connect"]),
            "num_parameter_free": float(counts["parameter_free"])}


__all__ = ["NB201Space", "check_alpha_init"]
