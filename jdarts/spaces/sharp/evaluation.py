"""sharpDARTS evaluation networks: the DARTS CIFAR / ImageNet networks over the sharp ops.

sharp_darts.txt sec. 3.3 evaluates its cells in DARTS's networks (Table 2:
"The code and this table is derived from DARTS"); only the operations differ.
Registered in `jdarts.models.MODELS` as 'sharp_cifar' and 'sharp_imagenet'
(config `model.name`), with the same `model` keys as 'cifar' / 'imagenet'.
"""
from __future__ import annotations

import flax.linen as nn

from jdarts import model_registry as models_base
from jdarts import ops
from jdarts.spaces.base import config_get
from jdarts.spaces.darts_cnn.evaluation import NetworkCIFAR, NetworkImageNet
from jdarts.spaces.sharp import primitives


def sharp_cifar(cfg, num_classes: int, genotype, opts: ops.OpOptions) -> nn.Module:
  """`NetworkCIFAR` of `genotype` with the sharpDARTS operations."""
  return NetworkCIFAR(genotype, C=config_get(cfg, "init_channels", 36),
                      num_classes=num_classes, layers=config_get(cfg, "layers", 20),
                      auxiliary=config_get(cfg, "auxiliary", True),
                      drop_path_prob=config_get(cfg, "drop_path_prob", 0.0),
                      stem_multiplier=config_get(cfg, "stem_multiplier", 3), opts=opts,
                      op_registry=primitives.OPS)


def sharp_imagenet(cfg, num_classes: int, genotype, opts: ops.OpOptions) -> nn.Module:
  """`NetworkImageNet` of `genotype` with the sharpDARTS operations."""
  return NetworkImageNet(genotype, C=config_get(cfg, "init_channels", 48),
                         num_classes=num_classes, layers=config_get(cfg, "layers", 14),
                         auxiliary=config_get(cfg, "auxiliary", True),
                         drop_path_prob=config_get(cfg, "drop_path_prob", 0.0), opts=opts,
                         op_registry=primitives.OPS)


for _name, _fn in (("sharp_cifar", sharp_cifar), ("sharp_imagenet", sharp_imagenet)):
  if _name not in models_base.MODELS:
    models_base.MODELS.register(_name, _fn)
  models_base.MODEL_OPS[_name] = tuple(primitives.OPS.names())

__all__ = ["sharp_cifar", "sharp_imagenet"]
