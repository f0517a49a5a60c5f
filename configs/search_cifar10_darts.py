"""DARTS convolutional cell search on CIFAR-10 (Liu et al. 2019, sec. 3.1, A.1.1).

    jdarts search --config=configs/search_cifar10_darts.py --workdir=runs/darts_c10

First order by default (the paper's "DARTS (first order)" row of Table 1); the
second-order search of the paper's main result is

    jdarts search --config=configs/search_cifar10_darts.py:second_order --workdir=...

which uses the exact unrolled hypergradient (`arch.method='unrolled'`;
'exact_hvp' gives the same numbers via Hessian-vector products,
'finite_difference' is eq. 8 of the paper). CIFAR-10 is read through
tensorflow-datasets (`--config.data.data_dir=DIR`) or from the python pickle
files in DIR/cifar-10-batches-py. A local smoke run: `:debug`.
"""
from jdarts import config_lib


def get_config(arg: str = ""):
  c = config_lib.search_defaults()  # every paper value is quoted there
  if arg == "second_order":
    c.arch.method = "unrolled"        # eq. 6-7, xi = eta_w (footnote 1)
  elif arg == "debug":
    c.model.init_channels, c.model.layers = 8, 5
    c.batch_size, c.max_steps, c.log_every = 16, 20, 5
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; use '', 'second_order' or 'debug'.")
  return c
