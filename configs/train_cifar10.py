"""Train a DARTS cell from scratch on CIFAR-10 (Liu et al. 2019, sec. 3.2, A.2.1).

    jdarts train --config=configs/train_cifar10.py --workdir=runs/eval_c10 \
        [--config.genotype=DARTS_V2|path/genotype.json|runs/search_dir]
    jdarts summary --config=configs/train_cifar10.py [--json]

The paper's evaluation network: 20 cells, 36 initial channels, auxiliary head
(weight 0.4), drop-path 0.2, cutout 16, batch 96, 600 epochs of momentum SGD
(lr 0.025, cosine to 0, momentum 0.9, weight decay 3e-4, gradient clip 5).
Every value is quoted with its source in `jdarts.train_config.train_defaults`.
DARTS_V2 gives 3.3M parameters (paper Table 1; the reference logs
"param size = 3.349342MB"). Test accuracy is on CIFAR-10's test split;
`--config.data.extra_test_sets=cifar10_1` also reports CIFAR-10.1 (prepare it
with `tfds build cifar10_1/v4 --file_format=array_record`).
`--config.dtype=bfloat16` trains in mixed precision. A rerun in the same
workdir resumes from its latest checkpoint. Variants: `:debug` (a tiny
network, a few steps).
"""
from jdarts import train_config


def get_config(arg: str = ""):
  c = train_config.train_defaults()  # A.2.1, every value quoted there
  if arg == "debug":
    c.model.init_channels, c.model.layers = 8, 5
    c.batch_size, c.max_steps, c.log_every = 16, 20, 5
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; use '' or 'debug'.")
  return c
