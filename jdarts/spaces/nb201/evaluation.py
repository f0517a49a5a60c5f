"""The NAS-Bench-201 evaluation network, registered in `jdarts.models.MODELS` as 'nb201'.

`jdarts train` / `jdarts summary` with `model.name='nb201'` build
`network.TinyNetwork` from `config.genotype`, an NB201 string
('|nor_conv_3x3~0|+...'), a genotype.json {'arch': ...} or an NB201 search
workdir (`genotype.load_arch`). Model keys: init_channels (C, 16),
cells_per_stage (N, 5).
"""
from __future__ import annotations

import flax.linen as nn

from jdarts import model_registry
from jdarts import ops
from jdarts.spaces.base import config_get
from jdarts.spaces.nb201.genotype import arch_to_str, load_arch
from jdarts.spaces.nb201.network import TinyNetwork


@model_registry.MODELS.register("nb201")
def _nb201(cfg, num_classes: int, genotype, opts: ops.OpOptions) -> nn.Module:
  arch = genotype if isinstance(genotype, tuple) else load_arch(genotype)
  return TinyNetwork(arch, C=config_get(cfg, "init_channels", 16),
                     N=config_get(cfg, "cells_per_stage", 5), num_classes=num_classes,
                     opts=opts)


model_registry.GENOTYPE_LOADERS["nb201"] = load_arch
model_registry.GENOTYPE_JSON["nb201"] = lambda arch: {"arch": arch_to_str(arch)}

__all__ = ["TinyNetwork"]
