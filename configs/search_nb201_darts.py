"""Bi-level DARTS on NAS-Bench-201: the baseline of Single-DARTS Table 1 (sec. 5.1.1).

    jdarts search --config=configs/search_nb201_darts.py --workdir=runs/nb201_darts \
        --config.data.data_dir=/path/to/data
    jdarts search --config=configs/search_nb201_darts.py:second_order,cifar100 ...

Variants (comma list): 'second_order' (arch.method='exact_hvp': DARTS eq. 7
without the finite-difference approximation; 'unrolled' and
'finite_difference' via --config.arch.method), and a dataset: 'cifar10'
(default), 'cifar100', 'imagenet16_120' (the latter needs
--config.data.data_dir naming the folder of its pickle files).
Settings: `jdarts.spaces.nb201.config.search_defaults` (softmax, weights SGD
lr 0.025 cosine, momentum 0.9; alphas Adam 3e-4, betas (0.5, 0.999)).
"""
from jdarts.spaces.nb201 import config as nb201_config


def get_config(arg: str = ""):
  dataset, rest = nb201_config.parse_variant(arg, known=("second_order",))
  c = nb201_config.search_defaults(dataset)
  c.arch.method = "exact_hvp" if "second_order" in rest else "first_order"
  return c
