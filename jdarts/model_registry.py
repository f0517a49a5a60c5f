"""The registry of discrete evaluation networks and what every such network shares.

`MODELS` maps a config's `model.name` to a factory
`factory(model_cfg, num_classes, genotype, opts) -> nn.Module`; the networks
themselves live with their search space (the DARTS CNN ones, 'cifar' and
'imagenet', in `jdarts.spaces.darts_cnn.evaluation`), which registers them
here. This module sits below every space, so a space can import it without
a cycle; `jdarts.models` is the entry point that also loads the built-in
networks.

A network is called as `net.apply(variables, images, train=..., ...)` with
`variables = {'params', 'batch_stats'}` and returns `(logits, logits_aux)`.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdarts import genotypes as genotypes_lib
from jdarts import ops
from jdarts.registry import Registry

MODELS = Registry("evaluation model")

# model name -> the operation names its genotypes may use, for networks whose
# cells draw on another op namespace than DARTS's (sharpDARTS); a name not
# here accepts `genotypes.KNOWN_OPS`.
MODEL_OPS: Dict[str, Tuple[str, ...]] = {}


def known_ops(model_name: str) -> Tuple[str, ...]:
  """The operation names a genotype for model `model_name` may use."""
  return MODEL_OPS.get(model_name, genotypes_lib.KNOWN_OPS)

# Name of the auxiliary head's parameter subtree; excluded from `params` as
# the reference excludes parameter names containing 'auxiliary'.
AUXILIARY = "auxiliary_head"

# XLA options for compiling one-off programs (initialisation) on CPU.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _get(cfg, key, default):
  if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def op_options(cfg, bn_axis_name=None) -> ops.OpOptions:
  """Evaluation-network operation options: BatchNorm with running averages."""
  return ops.OpOptions(depthwise=_get(cfg, "depthwise", "auto"),
                       track_running_stats=True, bn_axis_name=bn_axis_name,
                       bn_momentum=_get(cfg, "bn_momentum", 0.9),
                       dtype=jnp.dtype(_get(cfg, "dtype", "float32")))


def build_model(cfg, num_classes: int, *, bn_axis_name=None, genotype=None) -> nn.Module:
  """An evaluation network from a config's `model` block.

  Args:
    cfg: mapping with `name` (a key of `MODELS`, e.g. 'cifar' | 'imagenet'),
      `genotype` (a registered name such as 'DARTS_V2', a genotype JSON file,
      or a search workdir holding genotype.json), `init_channels`, `layers`,
      `auxiliary`, `drop_path_prob`, `depthwise`, `dtype`.
    num_classes: classifier width.
    bn_axis_name: device axis for cross-replica BatchNorm statistics.
    genotype: a `Genotype` overriding `cfg.genotype`.

  Returns:
    The Flax module.
  """
  if genotype is None:
    genotype = genotypes_lib.load_genotype(_get(cfg, "genotype", "DARTS_V2"))
  return MODELS.get(_get(cfg, "name", "cifar"))(cfg, num_classes, genotype,
                                                 op_options(cfg, bn_axis_name))


def without_axis_name(net: nn.Module) -> nn.Module:
  """The same network with BatchNorm statistics local (for use outside a device map)."""
  return net.clone(opts=dataclasses.replace(net.opts, bn_axis_name=None))


def init_variables(net: nn.Module, rng, image_shape: Sequence[int], batch_size: int = 1):
  """`{'params', 'batch_stats'}` of `net` for (H, W, C) images, auxiliary head included."""
  net = without_axis_name(net)
  x = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)

  def init(rng):
    k_params, k_drop = jax.random.split(rng)
    return dict(net.init({"params": k_params, "dropout": k_drop}, x, train=False))
  # One compiled program (op-by-op initialisation compiles every small op
  # apart). It runs once, so on CPU it is compiled without LLVM optimisation:
  # the many unrolled threefry hashes of the initialisers otherwise take
  # 5-10x longer to compile than the whole forward pass.
  lowered = jax.jit(init).lower(rng)
  return lowered.compile(INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None)(rng)


def abstract_variables(net: nn.Module, image_shape: Sequence[int]):
  """Shapes and dtypes of `init_variables` without computing anything (jax.eval_shape)."""
  net = without_axis_name(net)
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  return jax.eval_shape(
      lambda k, x: dict(net.init({"params": k, "dropout": k}, x, train=False)),
      jax.random.PRNGKey(0), x)


def count_params(params) -> Dict[str, int]:
  """{'params': without the auxiliary head (the reference's count), 'params_total'}."""
  total = ops.count_params(params)
  aux = ops.count_params(params.get(AUXILIARY, {})) if isinstance(params, Mapping) else 0
  return {"params": total - aux, "params_total": total}


__all__ = ["MODELS", "MODEL_OPS", "known_ops", "AUXILIARY", "INIT_COMPILER_OPTIONS", "build_model", "init_variables",
           "abstract_variables", "count_params", "op_options", "without_axis_name"]
