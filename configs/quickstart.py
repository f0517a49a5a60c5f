"""Offline quickstart: a small DARTS search on scikit-learn's 8x8 digits.

    jdarts search --config=configs/quickstart.py --workdir=runs/quickstart

Real data that ships inside a dependency (scikit-learn), so it runs on any
machine without a download: 1,500 training images split 50/50 into
search-train / search-val as in the paper (A.1.1), 297 held-out test images.
The search space, optimisers and update rules are the paper's (A.1.1); only
the size is reduced: C=8, 3 cells (normal, reduction, reduction), batch 32,
3 epochs, architecture learning rate 3e-3 (the paper's 3e-4 barely moves
the alphas in 3 epochs). The edges leaving each cell state are computed
together (`model.batch_edges`: the same function, parameters stacked per
source), which XLA compiles faster and runs about as fast on CPU. On 2 CPU
cores it finishes in about 85 s cold, 50 s of it to the first step (a
second-order search, `--config.arch.method=exact_hvp`, in about 2.5 minutes).
"""
from jdarts import config_lib


def get_config():
  c = config_lib.search_defaults()
  c.data.name = "digits"
  c.data.test_split = "test"
  c.model.init_channels = 8
  c.model.layers = 3
  # Same function as the per-edge supernet; faster to compile (benchmarks/RESULTS.md).
  c.model.batch_edges = True
  c.batch_size = 32
  c.epochs = 3
  c.log_every = 5
  # 10x the paper's eta_alpha (A.1.1: 3e-4): 3 epochs instead of 50 would
  # otherwise leave the alphas within ~0.02 of zero.
  c.arch.learning_rate = 3e-3
  return c
