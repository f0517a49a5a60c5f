"""Offline NAS-Bench-201 search on scikit-learn's 8x8 digits: DARTS vs Single-DARTS, small.

    jdarts search --config=configs/quickstart_nb201.py --workdir=runs/qs_nb201_darts
    jdarts search --config=configs/quickstart_nb201.py:single --workdir=runs/qs_nb201_single

Real data that ships inside scikit-learn (1,500 training images, split 50/50
into search-train / search-val, 297 held-out test images; 8x8x1, 10 classes).
The NB201 cell and macro structure, reduced: C=8, N=1 cell per stage,
batch 32, 8 epochs (184 steps). Default: bi-level DARTS, first order,
softmax (Single-DARTS Table 1's baseline); ':single' is Single-DARTS
(single-level, sigmoid started at weight 1/|O|, weights lr 0.005, alpha
weight decay 0; sec. 4, 5.1.1). Both log the gradient correlation of
sec. 5.2.1 every `log_every` steps and the alphas and derived cell every
epoch (alpha_history.jsonl). Architecture lr 10x the NB201 reference's 3e-4,
as in configs/quickstart.py: 8 epochs instead of 50.
"""
from jdarts.spaces.nb201 import config as nb201_config


def get_config(arg: str = ""):
  if arg not in ("", "single"):
    raise ValueError(f"Unknown config variant {arg!r}; use '' (DARTS) or 'single'.")
  c = nb201_config.search_defaults("cifar10")
  c.data.name = "digits"
  c.data.test_split = "test"
  c.model.init_channels = 8
  c.model.cells_per_stage = 1
  c.batch_size = 32
  c.epochs = 8
  c.log_every = 4
  c.arch.learning_rate = 3e-3
  c.log_grad_correlation = True
  if arg == "single":
    c.arch.method = "single_level"
    c.model.mixing = "sigmoid"
    c.model.alpha_init = "uniform_weights"
    c.model.alpha_init_scale = 0.0
    c.optim.learning_rate = 0.005
    c.optim.learning_rate_min = 0.0
    c.arch.weight_decay = 0.0
  return c
