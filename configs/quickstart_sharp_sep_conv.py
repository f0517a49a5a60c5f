"""Offline quickstart of SharpSepConvDARTS (sharp_darts.txt sec. 4.2 item 2) on 8x8 digits.

    jdarts search --config=configs/quickstart_sharp_sep_conv.py --workdir=runs/qs_ssc
    jdarts search --config=configs/quickstart_sharp_sep_conv.py --workdir=runs/qs_ssc2 \
        --config.arch.method=exact_hvp

DARTS's eight candidates with SharpSepConv blocks for its separable and
dilated convolutions, searched first order (Table 2: SharpSepConvDARTS,
GradOrder 1); `exact_hvp` for exact second order. Sizes as
`configs/quickstart_sharp.py` (C=4, 3 cells of 2 nodes, batch 16, 1 epoch of
digits). The paper's setting is `configs/search_cifar10_sharp.py:sharp_sep_conv_darts`.
"""
from jdarts import config_lib
from jdarts.spaces.sharp import primitives


def get_config():
  c = config_lib.search_defaults()
  c.space = "sharp_sep_conv_darts"
  c.model.primitives = primitives.DARTS_PRIMITIVES  # DARTS sec. 2.1, SharpSepConv blocks
  c.data.name = "digits"
  c.data.test_split = "test"
  c.model.init_channels = 4
  c.model.layers = 3
  c.model.steps = 2
  c.model.multiplier = 2
  c.model.stem_multiplier = 1
  c.batch_size = 16
  c.epochs = 1
  c.log_every = 5
  c.optim.schedule = "cosine_power_by_epoch"   # Table 2: Cosine Power Annealing, p=2
  c.optim.power = 2.0
  c.arch.learning_rate = 3e-3  # 10x A.1.1's 3e-4: one epoch instead of 60
  return c
