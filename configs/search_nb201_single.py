"""Single-DARTS on NAS-Bench-201 (papers/single_darts.txt sec. 4, 5.1.1).

    jdarts search --config=configs/search_nb201_single.py --workdir=runs/nb201_single \
        --config.data.data_dir=/path/to/data
    jdarts search --config=configs/search_nb201_single.py:cifar100 ...

Single-level: weights and alphas take one step each from one gradient of the
training loss on the same batch (sec. 4, eq. 16; `arch.method='single_level'`);
the validation half is only measured (and used by the gradient correlation).
Sigmoid relaxation (sec. 4) starting where every operation has weight 1/|O|
(`model.alpha_init='uniform_weights'`: alpha = -ln 4; our reading of sec. 4,
whose formula our text copy lost; `--config.model.alpha_init=zeros` is the
other start of Table 5). sec. 5.1.1: 50 epochs, batch 64, weights SGD
lr 0.005 cosine, momentum 0.9; alphas Adam with a fixed lr and betas
(0.5, 0.999); sec. 4: alpha weight decay 0 "to avoid extra gradients on zero
operations". Variants: 'cifar10' (default), 'cifar100', 'imagenet16_120'.
"""
from jdarts.spaces.nb201 import config as nb201_config


def get_config(arg: str = ""):
  dataset, _ = nb201_config.parse_variant(arg)
  c = nb201_config.search_defaults(dataset)
  c.arch.method = "single_level"      # sec. 4: one batch for both updates
  c.model.mixing = "sigmoid"          # sec. 4: sigmoid replaces softmax
  c.model.alpha_init = "uniform_weights"  # sec. 4: sigma(alpha_0) = 1/|O|
  c.model.alpha_init_scale = 0.0
  c.optim.learning_rate = 0.005       # sec. 5.1.1: "learning rate as 0.005"
  c.optim.learning_rate_min = 0.0     # sec. 5.1.1: cosine scheduler
  c.arch.weight_decay = 0.0           # sec. 4: "weight decay is set to 0"; Adam lr: fixed
  c.log_grad_correlation = True       # sec. 5.2.1
  return c
