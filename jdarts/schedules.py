"""Learning-rate schedules as optax schedules (functions of the step count).

* `cosine_by_epoch`: the DARTS reference's `CosineAnnealingLR(epochs, eta_min)`
  stepped once per epoch, so the rate is constant within an epoch.
* `cosine`: the same curve evaluated at every step.
* `exponential_by_epoch`: lr * decay ** epoch (DARTS ImageNet, paper A.2.3).
"""
from __future__ import annotations

import jax.numpy as jnp


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


def exponential_by_epoch(lr: float, decay: float, steps_per_epoch: int):
  """lr * decay ** (step // steps_per_epoch)."""
  def schedule(step):
    return lr * decay ** jnp.floor_divide(step, steps_per_epoch)
  return schedule


SCHEDULES = {"cosine_by_epoch": cosine_by_epoch, "cosine": cosine,
             "exponential_by_epoch": exponential_by_epoch}
