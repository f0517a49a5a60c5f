"""The optimisers of a run: the weights' (search and train alike) and the alphas'.

Both are optax chains built from a config block, with the block's checks
beside them (`validate_weight`, `validate_arch`), so search and train build and
check the same thing in one place.
"""
from __future__ import annotations

import math

import optax

from jdarts import schedules
from jdarts.config_lib import ConfigError


def weight_optimizer(optim_cfg, schedule) -> optax.GradientTransformation:
  """Momentum SGD with coupled weight decay and global-norm clipping.

  Matches the reference (quark0/darts `train_search.py` and `train.py`): the raw
  gradient is clipped to `grad_clip` (`clip_grad_norm_`), then
  `weight_decay * w` is added, then momentum SGD in PyTorch's convention, which
  optax.sgd follows (buf = momentum * buf + g; w -= lr * buf).

  Args:
    optim_cfg: the `optim` block: grad_clip (0: none), weight_decay, momentum.
    schedule: step -> learning rate (`schedules.make_schedule`).
  """
  parts = []
  if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  if optim_cfg.weight_decay:
    parts.append(optax.add_decayed_weights(optim_cfg.weight_decay))
  parts.append(optax.sgd(schedule, momentum=optim_cfg.momentum or None))
  return optax.chain(*parts)


def arch_optimizer(arch_cfg) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient (PyTorch Adam's weight_decay)."""
  parts = []
  if arch_cfg.weight_decay:
    parts.append(optax.add_decayed_weights(arch_cfg.weight_decay))
  parts.append(optax.adam(arch_cfg.learning_rate, b1=arch_cfg.b1, b2=arch_cfg.b2))
  return optax.chain(*parts)


def _number(block: str, cfg, key: str, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = True) -> None:
  v = cfg.get(key)
  inside = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
  if not inside:
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    raise ConfigError(f"{block}.{key} must be a finite number in {lo}{low}, {high}{hi}, "
                      f"got {v!r}.")


def validate_weight(optim_cfg) -> None:
  """Raises ConfigError naming a bad key of the `optim` block (weights' optimiser)."""
  schedules.validate(optim_cfg)
  _number("optim", optim_cfg, "momentum", 0.0, 1.0)
  _number("optim", optim_cfg, "weight_decay", 0.0)
  _number("optim", optim_cfg, "grad_clip", 0.0)


def validate_arch(arch_cfg) -> None:
  """Raises ConfigError naming a bad optimiser key of the `arch` block (alphas' Adam)."""
  _number("arch", arch_cfg, "learning_rate", 0.0, low_open=True)
  _number("arch", arch_cfg, "b1", 0.0, 1.0)
  _number("arch", arch_cfg, "b2", 0.0, 1.0)
  _number("arch", arch_cfg, "weight_decay", 0.0)
