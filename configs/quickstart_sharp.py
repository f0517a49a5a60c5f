"""Offline quickstart of the sharpDARTS search space (sharp_darts.txt Table 1) on 8x8 digits.

    jdarts search --config=configs/quickstart_sharp.py --workdir=runs/quickstart_sharp
    jdarts search --config=configs/quickstart_sharp.py --workdir=runs/quickstart_sharp2 \
        --config.arch.method=exact_hvp

The DARTS cell structure over Table 1's ten candidates (every convolution a
SharpSepConv block), searched first order as the paper does (Table 2,
GradOrder 1); `--config.arch.method=exact_hvp` gives the exact second-order
hypergradient. Tiny so that it runs on 2 CPU cores in minutes: C=4, 3 cells
(normal, reduction, reduction) of 2 nodes, batch 16, one epoch of scikit-learn's
digits (shipped with scikit-learn: nothing is downloaded). The paper's setting
is `configs/search_cifar10_sharp.py`. `--config.model.mixing=max_w` searches with
Max-W weighting (eq. 3).
"""
from jdarts import config_lib
from jdarts.spaces.sharp import primitives


def get_config():
  c = config_lib.search_defaults()
  c.space = "sharp"
  c.model.primitives = primitives.PRIMITIVES   # Table 1
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
  # sharp_darts.txt Table 2: Cosine Power Annealing p=2 (their training
  # regimen); the DARTS range 0.025 -> 0.001 of A.1.1 for the search.
  c.optim.schedule = "cosine_power_by_epoch"
  c.optim.power = 2.0
  c.arch.learning_rate = 3e-3  # 10x A.1.1's 3e-4: one epoch instead of 60
  return c
