"""sharpDARTS searches on CIFAR-10 (sharp_darts.txt sec. 3.3, Table 2).

    jdarts search --config=configs/search_cifar10_sharp.py --workdir=runs/sharp_c10 \
        --config.data.data_dir=/path/to/data
    jdarts search --config=configs/search_cifar10_sharp.py:sharp_sep_conv_darts \
        --workdir=runs/ssc_c10 --config.data.data_dir=/path/to/data

'' searches the sharpDARTS space (Table 1), ':sharp_sep_conv_darts' DARTS's
primitives with SharpSepConv blocks (sec. 4.2 item 2). Both first order
(Table 2: GradOrder 1) for 60 epochs (sec. 3.3: "Our training time for a 60
epoch search is 0.8-1.2 days"). The rest is DARTS's search (A.1.1, as in
`configs/search_cifar10_darts.py`: 8 cells, C=16, batch 64, SGD 0.025 with
momentum 0.9 and weight decay 3e-4, Adam 3e-4 on alphas) except the weights'
schedule: Cosine Power Annealing p=2 down to 1e-4, the reference's
train_search.py defaults (ahundt/sharpDARTS: --lr_power_annealing_exponent_order 2,
--learning_rate_min 1e-4). Append `--config.model.mixing=max_w` for Max-W
weighting (sec. 4.3).
"""
from jdarts import config_lib
from jdarts.spaces.sharp import primitives


def get_config(arg: str = ""):
  c = config_lib.search_defaults()
  if arg in ("", "sharp"):
    c.space = "sharp"
    c.model.primitives = primitives.PRIMITIVES        # Table 1
  elif arg == "sharp_sep_conv_darts":
    c.space = "sharp_sep_conv_darts"
    c.model.primitives = primitives.DARTS_PRIMITIVES  # DARTS sec. 2.1 as SharpSepConv
  else:
    raise ValueError(f"Unknown config variant {arg!r}; use '', 'sharp' or "
                     "'sharp_sep_conv_darts'.")
  c.epochs = 60                        # sec. 3.3: "a 60 epoch search"
  c.arch.method = "first_order"        # Table 2: GradOrder 1
  c.optim.schedule = "cosine_power_by_epoch"  # sec. 3.2, eq. 2 (reference: per epoch)
  c.optim.power = 2.0                  # reference train_search.py default exponent order
  c.optim.learning_rate_min = 1e-4     # reference train_search.py --learning_rate_min
  return c
