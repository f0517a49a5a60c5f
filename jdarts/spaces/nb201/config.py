"""Search-config defaults for the NAS-Bench-201 space, shared by configs/search_nb201_*.py.

Settings quote Single-DARTS (papers/single_darts.txt) sec. 5.1.1 and App. B,
and NAS-Bench-201's DARTS search (AutoDL-Projects `configs/nas-benchmark/
algos/DARTS.config`) where our copy of the paper lost the number in text
extraction; each such value says so.
"""
from __future__ import annotations

import ml_collections

from jdarts import config_lib

DATASETS = ("cifar10", "cifar100", "imagenet16_120")


def search_defaults(dataset: str = "cifar10") -> ml_collections.ConfigDict:
  """Bi-level DARTS on NB201 (the baseline of Single-DARTS Table 1); see the configs."""
  if dataset not in DATASETS:
    raise ValueError(f"NB201 dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
  c = config_lib.search_defaults()
  c.space = "nb201"
  c.model = ml_collections.ConfigDict(dict(
      init_channels=16,           # NB201: C=16
      cells_per_stage=5,          # App. B: "stacked by 15 cells" (N=5 per stage)
      primitives=("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                  "avg_pool_3x3"),  # App. B: the five operations
      mixing="softmax",           # DARTS eq. 2
      alpha_init="zeros",
      alpha_init_scale=1e-3,      # NB201 reference: 1e-3 * randn
      dtype="float32"))
  # CIFAR-10: App. B "separates the train set ... into two parts ... each 25K"
  # (NB201's own index list, configs/nas-benchmark/cifar-split.txt, is not
  # shipped here: the halves are drawn by search_split, same sizes, other
  # images). CIFAR-100 / ImageNet16-120: NB201 validates on half of the test
  # (val) set; here, as for CIFAR-10, on the held-out half of the train set.
  c.data.name = dataset
  c.data.train_portion = 0.5
  c.data.cutout = 0
  c.dataset = c.data.get_ref("name")  # --config.dataset=cifar100 sets data.name
  c.batch_size = 64               # sec. 5.1.1: "batch size of 64"
  c.epochs = 50                   # sec. 5.1.1: "50 epochs"
  c.optim.learning_rate = 0.025   # Table 1's DARTS = Table 5's lr 0.025 row
  c.optim.learning_rate_min = 0.001  # NB201 DARTS.config: eta_min 0.001
  c.optim.schedule = "cosine_by_epoch"  # sec. 5.1.1: "cosine scheduler"
  c.optim.momentum = 0.9          # sec. 5.1.1
  c.optim.weight_decay = 5e-4     # number lost in our text; NB201 DARTS.config 5e-4
  c.optim.grad_clip = 5.0         # NB201 DARTS reference: clip_grad_norm 5
  c.arch.learning_rate = 3e-4     # number lost in our text; NB201 reference arch lr 3e-4
  c.arch.b1, c.arch.b2 = 0.5, 0.999  # sec. 5.1.1: "momentum of (0.5, 0.999)"
  c.arch.weight_decay = 1e-3      # NB201 DARTS reference --arch_weight_decay 1e-3
  c.log_grad_correlation = False  # sec. 5.2.1 diagnostic (two extra backward passes)
  return c


def parse_variant(arg: str, known=()) -> tuple:
  """'second_order,cifar100' -> (dataset, set of other tokens); ValueError if unknown."""
  tokens = [t.strip() for t in arg.split(",") if t.strip()]
  datasets = [t for t in tokens if t in DATASETS]
  rest = {t for t in tokens if t not in DATASETS}
  bad = rest - set(known)
  if bad or len(datasets) > 1:
    raise ValueError(f"Unknown config variant {arg!r}; use a comma list of one of "
                     f"{', '.join(DATASETS)} and {', '.join(known) or 'nothing else'}.")
  return (datasets[0] if datasets else "cifar10"), rest
