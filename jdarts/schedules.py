"""Learning-rate schedules as optax schedules (functions of the step count), by name.

`SCHEDULES` maps a name to a `Schedule`: a builder from the `optim` config block
plus the run's epochs and steps per epoch, and the check of the keys it reads.
Search and train both build their weights' rate with `make_schedule`; users
register their own with `SCHEDULES.register('name', Schedule(build, validate))`.

* `cosine_by_epoch`: the DARTS reference's `CosineAnnealingLR(epochs, eta_min)`
  stepped once per epoch, so the rate is constant within an epoch (A.1.1).
* `cosine`: the same curve evaluated at every step.
* `cosine_power_by_epoch`, `cosine_power`: sharpDARTS's Cosine Power Annealing
  (sharp_darts.txt sec. 3.2, eq. 2) with `optim.power` p, stepped once per
  epoch (the reference, ahundt/sharpDARTS `cnn/cosine_power_annealing.py`,
  computes one rate per epoch) or at every step; p=1 is plain cosine
  annealing (eq. 1), the paper's special case.
* `exponential_by_epoch`: lr * decay ** epoch (DARTS ImageNet, paper A.2.3).
* `constant`: lr.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp

from jdarts.config_lib import ConfigError
from jdarts.registry import Registry

ScheduleFn = Callable[[Any], Any]


def cosine_by_epoch(lr: float, lr_min: float, epochs: int, steps_per_epoch: int):
  """lr_min + (lr - lr_min) * (1 + cos(pi * epoch / epochs)) / 2, epoch = step // spe."""
  if epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(f"cosine schedule needs epochs > 0 and steps_per_epoch > 0, "
                     f"got {epochs} and {steps_per_epoch}.")

  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    return lr_min + 0.5 * (lr - lr_min) * (1 + jnp.cos(jnp.pi * epoch / epochs))
  return schedule


def cosine(lr: float, lr_min: float, total_steps: int):
  """Per-step cosine annealing from lr to lr_min over total_steps."""
  def schedule(step):
    t = jnp.minimum(step, total_steps) / max(total_steps, 1)
    return lr_min + 0.5 * (lr - lr_min) * (1 + jnp.cos(jnp.pi * t))
  return schedule


def cosine_power_fraction(t, power: float):
  """Eq. 2's normalised curve: 1 at t=0 falling to 0 at t=1 (sharp_darts.txt sec. 3.2).

  With c = (1 + cos(pi t)) / 2 (eq. 1's fraction), returns
  (p ** (c + 1) - p) / (p ** 2 - p) for p != 1, and c for p = 1.

  Args:
    t: progress T_cur / T in [0, 1] (array or scalar).
    power: the exponent base p >= 1.
  """
  # (1 + cos(pi t)) / 2 = cos(pi t / 2) ** 2 without the cancellation of
  # 1 + cos near t = 1, which in float32 costs the last epochs' small rates
  # several digits.
  c = jnp.square(jnp.cos(0.5 * jnp.pi * t))
  if power == 1:
    return c
  # p ** (c + 1) - p = p * (p ** c - 1) = p * expm1(c log p): exact near c = 0,
  # where the plain difference loses digits at small learning rates.
  log_p = math.log(power)
  return power * jnp.expm1(c * log_p) / (power * power - power)


def cosine_power_by_epoch(lr: float, lr_min: float, power: float, epochs: int,
                          steps_per_epoch: int):
  """lr_min + (lr - lr_min) * eq. 2 fraction at epoch / epochs, epoch = step // spe."""
  if power == 1:  # the paper's special case: plain cosine annealing (eq. 1)
    return cosine_by_epoch(lr, lr_min, epochs, steps_per_epoch)
  if epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(f"cosine power schedule needs epochs > 0 and steps_per_epoch > 0, "
                     f"got {epochs} and {steps_per_epoch}.")

  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    return lr_min + (lr - lr_min) * cosine_power_fraction(epoch / epochs, power)
  return schedule


def cosine_power(lr: float, lr_min: float, power: float, total_steps: int):
  """Per-step Cosine Power Annealing from lr to lr_min over total_steps (eq. 2)."""
  if power == 1:  # the paper's special case: plain cosine annealing (eq. 1)
    return cosine(lr, lr_min, total_steps)
  def schedule(step):
    t = jnp.minimum(step, total_steps) / max(total_steps, 1)
    return lr_min + (lr - lr_min) * cosine_power_fraction(t, power)
  return schedule


def exponential_by_epoch(lr: float, decay: float, steps_per_epoch: int):
  """lr * decay ** (step // steps_per_epoch)."""
  def schedule(step):
    return lr * decay ** jnp.floor_divide(step, steps_per_epoch)
  return schedule


def constant(lr: float):
  """lr at every step, as a float32 scalar."""
  return lambda step: jnp.asarray(lr, jnp.float32)


class Schedule(NamedTuple):
  """A registered schedule.

  Attributes:
    build: `(optim_cfg, epochs, steps_per_epoch) -> step -> learning rate`.
    validate: `(optim_cfg) -> None`, raising ConfigError on the keys `build`
      reads; None when it reads only `learning_rate`.
  """
  build: Callable[[Any, int, int], ScheduleFn]
  validate: Optional[Callable[[Any], None]] = None


SCHEDULES = Registry("learning-rate schedule")


def _finite(cfg, key: str, low: float = 0.0, strict: bool = False) -> float:
  v = cfg.get(key)
  ok = isinstance(v, (int, float)) and math.isfinite(v) and (v > low if strict else v >= low)
  if not ok:
    raise ConfigError(f"optim.{key} must be a finite number {'>' if strict else '>='} "
                      f"{low}, got {v!r}.")
  return float(v)


def _check_lr_min(cfg) -> None:
  lr_min = _finite(cfg, "learning_rate_min")
  if lr_min > cfg.learning_rate:
    raise ConfigError(f"optim.learning_rate_min={lr_min} is above optim.learning_rate="
                      f"{cfg.learning_rate}; cosine annealing goes from the rate down to it.")


SCHEDULES.register("cosine_by_epoch", Schedule(
    lambda c, epochs, spe: cosine_by_epoch(c.learning_rate, c.learning_rate_min, epochs, spe),
    _check_lr_min))
SCHEDULES.register("cosine", Schedule(
    lambda c, epochs, spe: cosine(c.learning_rate, c.learning_rate_min, epochs * spe),
    _check_lr_min))
def _check_power(cfg) -> None:
  _check_lr_min(cfg)
  _finite(cfg, "power", low=1.0)


SCHEDULES.register("cosine_power_by_epoch", Schedule(
    lambda c, epochs, spe: cosine_power_by_epoch(c.learning_rate, c.learning_rate_min,
                                                 float(c.power), epochs, spe),
    _check_power))
SCHEDULES.register("cosine_power", Schedule(
    lambda c, epochs, spe: cosine_power(c.learning_rate, c.learning_rate_min,
                                        float(c.power), epochs * spe),
    _check_power))
SCHEDULES.register("exponential_by_epoch", Schedule(
    lambda c, epochs, spe: exponential_by_epoch(c.learning_rate, c.lr_decay, spe),
    lambda c: _finite(c, "lr_decay", strict=True)))
SCHEDULES.register("constant", Schedule(lambda c, epochs, spe: constant(c.learning_rate)))


def validate(optim_cfg) -> None:
  """Raises ConfigError for an unknown `optim.schedule` or a bad key it reads."""
  name = optim_cfg.get("schedule", "cosine_by_epoch")
  if name not in SCHEDULES:
    raise ConfigError(f"optim.schedule={name!r} is unknown; choose one of "
                      f"{', '.join(SCHEDULES.names())}.")
  _finite(optim_cfg, "learning_rate", strict=True)
  if "lr_decay" in optim_cfg:  # read by exponential_by_epoch only, but never silently bad
    _finite(optim_cfg, "lr_decay", strict=True)
  check = SCHEDULES.get(name).validate
  if check is not None:
    check(optim_cfg)


def make_schedule(optim_cfg, epochs: int, steps_per_epoch: int) -> ScheduleFn:
  """The `optim.schedule` of a config as a function step -> learning rate."""
  return SCHEDULES.get(optim_cfg.get("schedule", "cosine_by_epoch")).build(
      optim_cfg, epochs, steps_per_epoch)
