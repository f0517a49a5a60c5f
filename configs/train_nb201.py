"""Train a NAS-Bench-201 cell from scratch: the benchmark's network (Dong & Yang 2020).

    jdarts summary --config=configs/train_nb201.py \
        --config.genotype='|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|' --json
    jdarts train --config=configs/train_nb201.py --workdir=runs/nb201_eval \
        --config.genotype=runs/nb201_single --config.data.data_dir=/path/to/data

`genotype`: an NB201 string, a genotype.json {'arch': ...} or an NB201 search
workdir. The network is NB201's (AutoDL-Projects `TinyNetwork`): stem 3x3
conv C=16 + BN, 3 stages of N=5 cells with ResNet basic blocks between, BN,
ReLU, global pool, linear. Training follows NB201's 200-epoch schedule
(NAS-Bench-201 sec. 3.1/Table 2: Nesterov momentum 0.9 SGD, lr 0.1 cosine to
0, weight decay 5e-4, batch 256, crop + flip; Nesterov and label smoothing are
not wired in here: momentum SGD). `--config.dataset=cifar100` and
`imagenet16_120` change the data and the classifier width.
"""
from jdarts import train_config


def get_config(arg: str = ""):
  c = train_config.train_defaults()
  # NB201's best CIFAR-10 cell (its optimum in Single-DARTS Table 1).
  c.genotype = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
  c.model.name = "nb201"
  c.model.init_channels = 16        # NB201: C=16
  c.model.cells_per_stage = 5       # NB201: N=5
  c.model.auxiliary = False         # NB201 has no auxiliary head
  c.model.drop_path_prob = 0.0
  c.data.cutout = 0
  c.batch_size = 256                # NB201 Table 2
  c.epochs = 200                    # NB201 Table 2
  c.optim.learning_rate = 0.1       # NB201 Table 2: 0.1 cosine to 0
  c.optim.learning_rate_min = 0.0
  c.optim.weight_decay = 5e-4       # NB201 Table 2
  c.optim.grad_clip = 0.0
  c.dataset = c.data.get_ref("name")  # --config.dataset=cifar100 is data.name
  if arg == "debug":
    c.epochs, c.max_steps, c.log_every = 1, 5, 1
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; use '' or 'debug'.")
  return c
