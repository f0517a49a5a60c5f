"""The optimisers of a run: the weights' (search and train alike) and the alphas'.

Both are optax chains built from a config block, with the block's checks
beside them (`validate_weight`, `validate_arch`), so search and train build and
check the same thing in one place.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jdarts import schedules
from jdarts.config_lib import ConfigError


def _clips(optim_cfg) -> bool:
  return bool(optim_cfg.grad_clip and optim_cfg.grad_clip > 0)


def weight_optimizer(optim_cfg, schedule, clip: bool = True) -> optax.GradientTransformation:
  """Momentum SGD with coupled weight decay and global-norm clipping.

  Matches the reference (quark0/darts `train_search.py` and `train.py`): the raw
  gradient is clipped to `grad_clip` (`clip_grad_norm_`), then
  `weight_decay * w` is added, then momentum SGD in PyTorch's convention, which
  optax.sgd follows (buf = momentum * buf + g; w -= lr * buf).

  Args:
    optim_cfg: the `optim` block: grad_clip (0: none), weight_decay, momentum.
    schedule: step -> learning rate (`schedules.make_schedule`).
    clip: False leaves the clip out (the reference's virtual step); its state
      is then `strip_clip_state` of the clipped optimiser's.
  """
  parts = []
  if clip and _clips(optim_cfg):
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  if optim_cfg.weight_decay:
    parts.append(optax.add_decayed_weights(optim_cfg.weight_decay))
  parts.append(optax.sgd(schedule, momentum=optim_cfg.momentum or None))
  return optax.chain(*parts)


def strip_clip_state(optim_cfg, opt_state):
  """The state of `weight_optimizer(clip=False)` inside the clipped optimiser's state.

  The chain's state is one entry per part; the clip comes first and its state
  is empty, so the rest (decay, momentum buffer, step count) is shared as is.
  """
  return tuple(opt_state[1:]) if _clips(optim_cfg) else opt_state


def _regroup(optim_cfg, opt_state):
  """The clipped optimiser's state as chain(clip, chain(decay, sgd))'s state."""
  if not _clips(optim_cfg):
    return (opt_state,)
  return (opt_state[0], tuple(opt_state[1:]))


# `arch.virtual_step`: how the second-order estimators form w' (jdarts.hypergrad).
VIRTUAL_STEPS = ("reference", "real_update", "clip_constant", "sgd")


def clip_by_global_norm_constant(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm whose scale factor is a constant under differentiation.

  The same values (g scaled by max_norm / ||g|| when ||g|| > max_norm), but
  d(clipped)/dg = scale * I: the reference's recurrent architect
  (quark0/darts `rnn/architect.py`) computes the clip coefficient on detached
  gradients and multiplies the second-order term by it. Its state is the
  clip's (empty), so it slots into the weight optimiser's chain.
  """
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    del params
    # optax's formula, t / ||g|| * max_norm, with ||g|| held constant.
    norm = jax.lax.stop_gradient(optax.tree_utils.tree_norm(updates))
    return jax.tree.map(
        lambda t: jnp.where(norm < max_norm, t, t / norm.astype(t.dtype) * max_norm),
        updates), state
  return optax.GradientTransformation(clip.init, update)


class VirtualStep(NamedTuple):
  """The weight step w' that `unrolled`, `exact_hvp` and `finite_difference` share.

  Attributes:
    optimizer: an optax transformation whose update forms w', or None for
      plain SGD w - xi * g.
    state_of: the weight optimiser's state -> `optimizer`'s state (None
      with plain SGD).
  """
  optimizer: Optional[optax.GradientTransformation]
  state_of: Callable[[Any], Any]


def virtual_step(kind: str, optim_cfg, schedule) -> VirtualStep:
  """The virtual step named by `arch.virtual_step`.

  * 'reference' (default): quark0/darts `architect.py` `_compute_unrolled_model`,
    w' = w - lr * (momentum * buf + g + wd * w) with the *unclipped* gradient g
    and buf the weight optimiser's momentum buffer: the real update without
    its clip, so w' is affine in g and `unrolled` equals `exact_hvp` (eq. 7)
    when xi is the learning rate (arch.xi < 0).
  * 'real_update': the full real update, clip included. When ||g|| exceeds
    `optim.grad_clip`, `unrolled` differentiates through the clip (second-
    order term scaled by clip/||g|| and projected) while `exact_hvp` and
    `finite_difference` keep eq. 7's xi: this is *not* eq. 7, and the three
    disagree. The default before issue 11.
  * 'clip_constant': the real update, clip included, with the clip's scale
    factor held constant under differentiation: quark0/darts
    `rnn/architect.py` (the recurrent search), whose second-order term is
    scaled by the clip coefficient (the reference also clips v before its
    finite difference; jdarts does not: that is not a derivative).
  * 'sgd': plain w - xi * g (eq. 6 without momentum or decay).

  Raises:
    ConfigError: an unknown kind.
  """
  if kind == "sgd":
    return VirtualStep(None, lambda state: None)
  if kind == "real_update":
    return VirtualStep(weight_optimizer(optim_cfg, schedule), lambda state: state)
  if kind == "clip_constant":
    parts = [clip_by_global_norm_constant(optim_cfg.grad_clip)] if _clips(optim_cfg) else []
    return VirtualStep(optax.chain(*parts, weight_optimizer(optim_cfg, schedule, clip=False)),
                       lambda state: _regroup(optim_cfg, state))
  if kind == "reference":
    return VirtualStep(weight_optimizer(optim_cfg, schedule, clip=False),
                       lambda state: strip_clip_state(optim_cfg, state))
  hint = (" ('optimizer' is now 'real_update', the clip included; the default "
          "'reference' leaves the clip out as the paper and reference code do)"
          if kind == "optimizer" else "")
  raise ConfigError(f"arch.virtual_step must be one of {', '.join(VIRTUAL_STEPS)}, got "
                    f"{kind!r}{hint}.")


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
