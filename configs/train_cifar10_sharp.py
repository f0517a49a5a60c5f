"""Train a sharpDARTS cell on CIFAR-10 from scratch (sharp_darts.txt sec. 3.3, Table 2).

    jdarts train --config=configs/train_cifar10_sharp.py --workdir=runs/eval_sharp \
        --config.genotype=SHARP_DARTS --config.data.data_dir=/path/to/data
    jdarts train --config=configs/train_cifar10_sharp.py --workdir=runs/eval_ssc \
        --config.genotype=SHARPSEPCONV_DARTS --config.data.data_dir=/path/to/data

The DARTS CIFAR network (20 cells, C=36, auxiliary weight 0.4, drop-path 0.2,
cutout 16; DARTS A.2.1 as `configs/train_cifar10.py`) over the sharpDARTS
operations ('sharp_cifar'), trained as Table 2's caption says: "Cosine Power
Annealing (Eq. 2) where we set p=2, eta_max = 0.025, eta_min = 1e-8, and
T_0 = 2000 epochs" for the bold rows; the non-bold rows use 1000 epochs and
no AutoAugment. Batch 64 as the reference's README command
(ahundt/sharpDARTS `train.py --batch_size 64 --epochs 2000`). AutoAugment
(Table 2's "AutoAug" column) is `data.autoaugment` (`jdarts.data.autoaugment`,
the CIFAR-10 policy; needs Pillow). `--config.genotype`
also takes a sharp search's workdir.
"""
from jdarts import train_config


def get_config(arg: str = ""):
  c = train_config.train_defaults()
  c.genotype = "SHARP_DARTS"
  c.model.name = "sharp_cifar"
  c.optim.schedule = "cosine_power_by_epoch"  # Table 2: Cosine Power Annealing (eq. 2)
  c.optim.power = 2.0                         # Table 2: p=2
  c.optim.learning_rate = 0.025               # Table 2: eta_max = 0.025
  c.optim.learning_rate_min = 1e-8            # Table 2: eta_min = 1e-8
  c.epochs = 2000                             # Table 2: T_0 = 2000 (bold rows)
  c.batch_size = 64                           # reference README train.py --batch_size 64
  c.data.autoaugment = True                   # Table 2: AutoAugment (bold rows)
  if arg == "1k":
    c.epochs = 1000                           # Table 2's non-bold rows:
    c.data.autoaugment = False                # 1000 epochs, AutoAugment off
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; use '' or '1k'.")
  return c
