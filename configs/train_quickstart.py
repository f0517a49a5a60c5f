"""Evaluate the quickstart search's cell: train it from scratch on 8x8 digits (sec. 3.2).

    jdarts search --config=configs/quickstart.py --workdir=runs/quickstart
    jdarts train --config=configs/train_quickstart.py --workdir=runs/quickstart_eval \
        --config.genotype=runs/quickstart
    jdarts train --config=configs/train_quickstart.py --workdir=runs/random0_eval \
        --config.genotype=random:0

The paper's evaluation protocol (sec. 3.2, A.2.1: a larger network of the
searched cell trained from scratch, momentum SGD with cosine learning rate,
drop-path, test accuracy on held-out data) at the quickstart's size: the 1,500
training images of scikit-learn's digits (no validation split: the search
already used them), the 297 held-out test images, C=16, 5 cells (reductions
after cells 1 and 3), no auxiliary head (its 5x5 pooling needs 8x8 maps; here
they are 2x2), 10 epochs of batch 64, drop-path 0.1, no cutout (a 16-pixel
square is larger than the image). `--config.genotype=random:SEED` trains a
random cell of the same space: the baseline a search must beat. A few minutes
on 2 CPU cores. Variants: `:debug` (a few steps).
"""
from jdarts import train_config


def get_config(arg: str = ""):
  c = train_config.train_defaults()
  c.genotype = "runs/quickstart"      # the quickstart search's workdir (its genotype.json)
  c.data.name = "digits"
  c.data.test_split = "test"
  c.data.cutout = 0
  c.model.init_channels = 16
  c.model.layers = 5
  c.model.auxiliary = False
  c.model.stem_multiplier = 3
  c.model.drop_path_prob = 0.1
  c.batch_size = 64
  c.eval_batch_size = 300             # the whole test split in one batch
  c.epochs = 10
  c.log_every = 10
  c.eval_every_epochs = 5
  if arg == "debug":
    c.epochs, c.max_steps, c.log_every = 1, 5, 1
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; use '' or 'debug'.")
  return c
