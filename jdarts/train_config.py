"""Config defaults and validation for training a genotype from scratch (paper sec. 3.2).

`configs/train_cifar10.py` and `configs/train_imagenet.py` start from
`train_defaults()` and change what their paper section says. `validate`
raises `config_lib.ConfigError` with one line naming the bad key.

Sources: the paper's appendix A.2.1 (CIFAR-10) and A.2.3 (ImageNet); where
the paper says "other hyperparameters remain the same" or is silent, the
reference code quark0/darts `cnn/train.py` / `cnn/train_imagenet.py`.
"""
from __future__ import annotations

import math

import ml_collections

from jdarts import data as data_lib
from jdarts import models
from jdarts import optim
from jdarts import runs
from jdarts.config_lib import ConfigError
from jdarts.data import config_check as data_check

DTYPES = ("float32", "bfloat16")


def extra_test_sets(c):
  """The dataset names of `data.extra_test_sets` ('a,b' -> ['a', 'b'])."""
  return [n.strip() for n in str(c.data.get("extra_test_sets", "")).split(",") if n.strip()]


def train_defaults() -> ml_collections.ConfigDict:
  """CIFAR-10 evaluation with the paper's settings (A.2.1); see configs/train_cifar10.py."""
  c = ml_collections.ConfigDict()
  c.seed = 0                        # reference train.py --seed
  # A registered name (genotypes.GENOTYPES), a genotype.json file, or a search
  # workdir holding one.
  c.genotype = "DARTS_V2"           # sec. 3.2: the best second-order cell
  c.model = ml_collections.ConfigDict(dict(
      name="cifar",                 # jdarts.models.MODELS
      init_channels=36,             # A.2.1: "increased from 16 to 36"
      layers=20,                    # A.2.1: "a large network of 20 cells"
      auxiliary=True,               # A.2.1: "auxiliary towers"
      drop_path_prob=0.2,           # A.2.1: "path dropout of probability 0.2"
      stem_multiplier=3,            # reference model.py
      bn_momentum=0.9,              # PyTorch BatchNorm2d default momentum 0.1
      depthwise="auto"))
  # Compute dtype: 'bfloat16' is mixed precision (weights, optimiser state and
  # BatchNorm averages stay float32; the loss is computed in float32).
  c.dtype = "float32"
  c.data = ml_collections.ConfigDict(dict(
      name="cifar10", data_dir="",
      augment=True,                 # reference: RandomCrop(32, padding=4) + flip
      cutout=16,                    # A.2.1: cutout; reference --cutout_length 16
      valid_portion=0.0,            # >0 holds out this fraction of train as 'valid'
      test_split="test",            # the reference reports CIFAR test accuracy as valid_acc
      # Comma-separated registered datasets evaluated as extra test sets (their
      # 'test' split, normalised as the training data), e.g. 'cifar10_1'.
      extra_test_sets="",
      autoaugment=False,            # sharp_darts.txt Table 2: AutoAugment's CIFAR-10 policy
      num_threads=0, worker_count=0))  # grain prefetch threads / worker processes
  c.batch_size = 96                 # A.2.1: "batch size 96"
  c.eval_batch_size = 0             # 0: batch_size
  c.epochs = 600                    # A.2.1: "trained for 600 epochs"
  c.max_steps = 0                   # 0: no limit (for smoke runs)
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=0.025,          # A.2.1 "same as for search" = A.1.1 eta_w
      learning_rate_min=0.0,        # reference train.py: CosineAnnealingLR(epochs), eta_min 0
      schedule="cosine_by_epoch",   # A.1.1: cosine without restart, stepped per epoch
      lr_decay=0.97,                # only for exponential_by_epoch
      power=2.0,                    # only for cosine_power*: sharp_darts.txt Table 2, p=2
      momentum=0.9,                 # A.1.1
      weight_decay=3e-4,            # A.1.1
      grad_clip=5.0))               # reference --grad_clip 5
  c.loss = ml_collections.ConfigDict(dict(
      auxiliary_weight=0.4,         # A.2.1: "auxiliary towers with weight 0.4"
      label_smoothing=0.0))
  # Drop-path probability at epoch e is drop_path_prob * e / epochs (reference
  # train.py); 'constant' keeps drop_path_prob throughout.
  c.drop_path_schedule = "linear"
  c.eval_every_epochs = 1           # reference: evaluates after every epoch
  c.parallel = ml_collections.ConfigDict(dict(
      backend="pmap", num_devices=0,
      cross_replica_bn=True))       # BN moments over the global batch (False: per device)
  c.checkpoint = ml_collections.ConfigDict(dict(
      enabled=True,                 # workdir/checkpoints; a rerun in the workdir resumes
      every_steps=0,                # 0: at the end of every epoch
      keep=3,                       # the last K checkpoints are kept
      async_save=False))
  c.log_every = 50                  # reference --report_freq 50
  c.progress = True
  c.tensorboard = True  # workdir/tb: the metrics rows as TensorBoard events too
  c.compilation_cache_dir = "~/.cache/jdarts/xla"
  c.drop_init_programs = True  # as in config_lib.search_defaults
  return c


def validate(c) -> None:
  """Raises ConfigError naming the first impossible setting of a train config."""
  def need(ok, msg):
    if not ok:
      raise ConfigError(msg)

  def number(v, low, high):  # finite, in [low, high)
    return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            and low <= v < high)

  need("genotype" in c and "loss" in c, "this is not a train config (it has no 'genotype' "
       "or 'loss' key; search configs are for `jdarts search`); use e.g. "
       "--config=configs/train_quickstart.py.")
  runs.validate_blocks(c)
  models.validate_config(c.model)
  runs.check_int(c, "eval_batch_size", 0, " (0: batch_size)")
  runs.check_int(c, "eval_every_epochs", 1)
  need(c.drop_path_schedule in ("linear", "constant"), "drop_path_schedule must be "
       f"'linear' or 'constant', got {c.drop_path_schedule!r}.")
  need(number(c.data.valid_portion, 0.0, 1.0),
       f"data.valid_portion must be in [0, 1), got {c.data.valid_portion!r}.")
  optim.validate_weight(c.optim)
  need(number(c.loss.auxiliary_weight, 0.0, math.inf), "loss.auxiliary_weight must be a "
       f"finite number >= 0 (paper: 0.4), got {c.loss.auxiliary_weight!r}.")
  need(number(c.loss.label_smoothing, 0.0, 1.0), "loss.label_smoothing must be in [0, 1) "
       f"(0: off; 0.1 for ImageNet), got {c.loss.label_smoothing!r}.")
  need(c.dtype in DTYPES, f"dtype={c.dtype!r}; choose one of {', '.join(DTYPES)}.")
  runs.check_int(c.data, "num_threads", 0, "", "data.")
  runs.check_int(c.data, "worker_count", 0, "", "data.")
  data_check.validate_block(c.data)
  for name in [c.data.name] + extra_test_sets(c):
    need(name in data_lib.DATASETS, f"dataset {name!r} (data.name / data.extra_test_sets) "
         f"is unknown; choose from {', '.join(sorted(data_lib.DATASETS))}.")
  try:
    models.load_genotype(c.model.name, c.genotype)
  except ValueError as e:
    raise ConfigError(f"genotype: {e}") from None
