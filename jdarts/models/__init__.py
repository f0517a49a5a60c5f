"""Discrete networks built from a genotype, for architecture evaluation (paper sec. 3.2).

The entry point of `jdarts train`: networks chosen by name from `MODELS`
(registry and shared helpers in `jdarts.models.base`; the networks live with
their search space):

* 'cifar':    `jdarts.spaces.darts_cnn.evaluation.NetworkCIFAR` (paper A.2.1);
* 'imagenet': `jdarts.spaces.darts_cnn.evaluation.NetworkImageNet` (A.2.3, mobile).

`build_model(model_cfg, num_classes)` makes one from a config's `model`
block; `init_variables` gives its `{'params', 'batch_stats'}`;
`count_params` counts parameters as the reference's `count_parameters_in_MB`
does (everything except the auxiliary head) and in total.

    from jdarts import models
    net = models.build_model(dict(name='cifar', genotype='DARTS_V2'), 10)
    variables = models.init_variables(net, jax.random.PRNGKey(0), (32, 32, 3))
    models.count_params(variables['params'])   # {'params': 3349342, ...}

The built-in networks register themselves when `build_model` or `MODELS` is
first used, as `jdarts.spaces` loads its built-in spaces: their package
imports `jdarts.models.base`, and Python runs this `__init__` before any
submodule, so importing them here at import time would be circular.
"""
from __future__ import annotations

from jdarts.models import base
from jdarts.models.base import (AUXILIARY, INIT_COMPILER_OPTIONS, abstract_variables,
                                count_params, init_variables, op_options,
                                without_axis_name)


def _register_builtin() -> None:
  # The import registers 'cifar' and 'imagenet'; kept out of module import time.
  from jdarts.spaces.darts_cnn import evaluation  # noqa: F401


def build_model(cfg, num_classes: int, *, bn_axis_name=None, genotype=None):
  """`jdarts.models.base.build_model` with the built-in networks registered."""
  _register_builtin()
  return base.build_model(cfg, num_classes, bn_axis_name=bn_axis_name, genotype=genotype)


def __getattr__(name: str):
  # `models.MODELS`: the registry, with the built-in networks in it.
  if name == "MODELS":
    _register_builtin()
    return base.MODELS
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODELS", "AUXILIARY", "INIT_COMPILER_OPTIONS", "build_model", "init_variables",
           "abstract_variables", "count_params", "op_options", "without_axis_name"]
