"""sharpDARTS's search spaces in the DARTS cell structure (sharp_darts.txt sec. 3, 4.2).

* `primitives`: the op namespace `OPS` (Table 1 and DARTS's names, every
  convolution a `jdarts.ops.SharpSepConv`), `PRIMITIVES` (Table 1),
  `DARTS_PRIMITIVES`, and the published genotypes SHARP_DARTS and
  SHARPSEPCONV_DARTS (registered in `jdarts.genotypes`);
* `space`: the spaces 'sharp' (Table 1) and 'sharp_sep_conv_darts' (DARTS's
  primitives as SharpSepConv blocks): the DARTS CNN space over this namespace;
* `evaluation`: the CIFAR and ImageNet evaluation networks over this
  namespace, registered in `jdarts.models.MODELS` as 'sharp_cifar' and
  'sharp_imagenet'.

Importing the package registers all of them.
"""
from jdarts.spaces.sharp import primitives
from jdarts.spaces.sharp import evaluation
from jdarts.spaces.sharp.space import SharpSepConvDartsSpace, SharpSpace

__all__ = ["primitives", "evaluation", "SharpSpace", "SharpSepConvDartsSpace"]
