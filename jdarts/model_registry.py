"""The registry of discrete evaluation networks and what every such network shares.

`MODELS` maps a config's `model.name` to a factory
`factory(model_cfg, num_classes, genotype, opts) -> nn.Module`; the networks
themselves live with their search space (the DARTS CNN ones, 'cifar' and
'imagenet', in `jdarts.spaces.darts_cnn.evaluation`), which registers them
here. This module sits below every space, so a space can import it without
a cycle; `jdarts.models` is the entry point that also loads the built-in
networks.

A space whose genotypes are not DARTS `Genotype`s registers how to read
them in `GENOTYPE_LOADERS[model name]` (spec -> genotype, ValueError on bad
input) and how to write genotype.json in `GENOTYPE_JSON`; `load_genotype`
picks the right one for a config's `model.name`.

A network is called as `net.apply(variables, images, train=..., ...)` with
`variables = {'params', 'batch_stats'}` and returns `(logits, logits_aux)`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdarts import genotypes as genotypes_lib
from jdarts import ops
from jdarts.config_lib import ConfigError
from jdarts.registry import Registry

MODELS = Registry("evaluation model")
# model name -> spec -> genotype, and genotype -> JSON dict, for networks whose
# genotypes are not DARTS `Genotype`s (e.g. 'nb201': NAS-Bench-201 strings).
GENOTYPE_LOADERS: Dict[str, Callable] = {}
GENOTYPE_JSON: Dict[str, Callable] = {}

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


def validate_config(cfg) -> None:
  """Raises ConfigError naming the first bad key of an evaluation `model` block.

  The keys every registered network reads: name, init_channels, layers,
  stem_multiplier, auxiliary, drop_path_prob, bn_momentum, depthwise.
  """
  name = _get(cfg, "name", "cifar")
  if name not in MODELS:
    raise ConfigError(f"model.name={name!r} is unknown; choose one of "
                      f"{', '.join(MODELS.names())}.")
  for key, low, hint in (("init_channels", 1, " (paper: 36 on CIFAR-10, 48 on ImageNet)"),
                         ("layers", 1, " (paper: 20 cells on CIFAR-10, 14 on ImageNet)"),
                         ("stem_multiplier", 1, " (reference: 3)")):
    v = _get(cfg, key, low)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ConfigError(f"model.{key} must be an integer >= {low}{hint}, got {v!r}.")
  aux = _get(cfg, "auxiliary", False)
  if not isinstance(aux, bool):
    raise ConfigError(f"model.auxiliary must be True or False, got {aux!r}.")
  for key, default, hint in (("drop_path_prob", 0.0, " (paper: 0.2)"),
                             ("bn_momentum", 0.9, " (PyTorch's 0.1 is 0.9 here)")):
    v = _get(cfg, key, default)
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        or not 0.0 <= v < 1.0):
      raise ConfigError(f"model.{key} must be a number in [0, 1){hint}, got {v!r}.")
  depthwise = _get(cfg, "depthwise", "auto")
  if depthwise not in ops.DEPTHWISE_IMPLS:
    raise ConfigError(f"model.depthwise={depthwise!r}; choose one of "
                      f"{', '.join(ops.DEPTHWISE_IMPLS)}.")
  ops.check_init(_get(cfg, "init", "pytorch"))


def op_options(cfg, bn_axis_name=None) -> ops.OpOptions:
  """Evaluation-network operation options: BatchNorm with running averages."""
  return ops.OpOptions(depthwise=_get(cfg, "depthwise", "auto"),
                       track_running_stats=True, bn_axis_name=bn_axis_name,
                       bn_momentum=_get(cfg, "bn_momentum", 0.9),
                       dtype=jnp.dtype(_get(cfg, "dtype", "float32")),
                       init=_get(cfg, "init", "pytorch"))


def load_genotype(model_name: str, spec):
  """The genotype `spec` names, read as the network `model_name` needs (ValueError if bad).

  A network with its own genotype format registers a loader in
  `GENOTYPE_LOADERS` (NAS-Bench-201 strings); DARTS-cell networks read
  `genotypes.load_genotype` with the operations of their namespace
  (`known_ops`).
  """
  loader = GENOTYPE_LOADERS.get(model_name)
  if loader is not None:
    return loader(spec)
  return genotypes_lib.load_genotype(spec, known_ops=known_ops(model_name))


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
    genotype = load_genotype(_get(cfg, "name", "cifar"), _get(cfg, "genotype", "DARTS_V2"))
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


__all__ = ["MODELS", "GENOTYPE_LOADERS", "GENOTYPE_JSON", "MODEL_OPS", "known_ops", "load_genotype",
           "AUXILIARY", "INIT_COMPILER_OPTIONS", "build_model", "init_variables",
           "abstract_variables", "count_params", "op_options", "without_axis_name"]
