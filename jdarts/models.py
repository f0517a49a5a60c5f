"""Discrete networks built from a genotype, for architecture evaluation (paper sec. 3.2).

The entry point of `jdarts train`: networks chosen by name from `MODELS`
(the networks live with their search space):

* 'cifar':    `jdarts.spaces.darts_cnn.evaluation.NetworkCIFAR` (paper A.2.1);
* 'imagenet': `jdarts.spaces.darts_cnn.evaluation.NetworkImageNet` (A.2.3, mobile);
* 'nb201':    `jdarts.spaces.nb201.network.TinyNetwork` (NAS-Bench-201 strings);
* 'sharp_cifar', 'sharp_imagenet': the same over the sharpDARTS operations
  (`jdarts.spaces.sharp.evaluation`).

`build_model(model_cfg, num_classes)` makes one from a config's `model`
block; `init_variables` gives its `{'params', 'batch_stats'}`;
`count_params` counts parameters as the reference's `count_parameters_in_MB`
does (everything except the auxiliary head) and in total.

    from jdarts import models
    net = models.build_model(dict(name='cifar', genotype='DARTS_V2'), 10)
    variables = models.init_variables(net, jax.random.PRNGKey(0), (32, 32, 3))
    models.count_params(variables['params'])   # {'params': 3349342, ...}

The registry and the helpers live in `jdarts.model_registry`, below every
space, so a space registers its networks there; importing this module loads
the built-in ones.
"""
from __future__ import annotations

from jdarts.model_registry import (AUXILIARY, GENOTYPE_JSON, INIT_COMPILER_OPTIONS, MODEL_OPS,
                                   MODELS, abstract_variables, build_model, count_params,
                                   init_variables, known_ops, load_genotype, op_options,
                                   validate_config, without_axis_name)
from jdarts.spaces.darts_cnn import evaluation  # noqa: F401  (registers 'cifar', 'imagenet')
from jdarts.spaces.nb201 import evaluation as _nb201  # noqa: F401  (registers 'nb201')
from jdarts.spaces.sharp import evaluation as _sharp  # noqa: F401  ('sharp_cifar', ...)

__all__ = ["MODELS", "GENOTYPE_JSON", "MODEL_OPS", "known_ops", "load_genotype", "AUXILIARY",
           "INIT_COMPILER_OPTIONS", "build_model", "init_variables", "abstract_variables",
           "count_params", "op_options", "validate_config", "without_axis_name"]
