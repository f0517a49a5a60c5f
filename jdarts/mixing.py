"""How architecture parameters weight the candidate operations of a mixed edge.

Each mixing is a pure function `weights = mix(alphas)` applied over the last
axis (the candidate operations), looked up by name in `MIXINGS`:

* 'softmax'  DARTS (paper eq. 2): w = softmax(alpha).
* 'sigmoid'  Single-DARTS (sec. 3.3): w = sigmoid(alpha), non-competitive.
* 'max_w'    sharpDARTS Max-W weighting (eq. 3): w' = 1 - max(w) + w with
             w = softmax(alpha); the strongest op gets weight exactly 1.

Users add their own with `MIXINGS.register('name', fn)`.

`initial_logit` ties the alphas' starting value to the mixing: Single-DARTS
(sec. 4) starts sigmoid alphas where every operation has the weight 1/|O|
that softmax gives at zero, i.e. alpha = -ln(|O| - 1), rather than at 0
(weight 1/2 each).
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from jdarts.registry import Registry

MIXINGS = Registry("mixing")


@MIXINGS.register("softmax")
def softmax(alphas: jnp.ndarray) -> jnp.ndarray:
  """(..., num_ops) logits -> (..., num_ops) weights summing to one."""
  return jax.nn.softmax(alphas, axis=-1)


@MIXINGS.register("sigmoid")
def sigmoid(alphas: jnp.ndarray) -> jnp.ndarray:
  """(..., num_ops) logits -> independent (..., num_ops) weights in (0, 1)."""
  return jax.nn.sigmoid(alphas)


@MIXINGS.register("max_w")
def max_w(alphas: jnp.ndarray) -> jnp.ndarray:
  """(..., num_ops) logits -> 1 - max(w) + w, with w the softmax weights."""
  w = jax.nn.softmax(alphas, axis=-1)
  return 1.0 - jnp.max(w, axis=-1, keepdims=True) + w


ALPHA_INITS = ("zeros", "uniform_weights")


def initial_logit(init, name: str, num_ops: int) -> float:
  """The constant every initial alpha starts at (noise is the space's business).

  Args:
    init: 'zeros'; 'uniform_weights': the logit at which the mixing `name`
      gives every one of `num_ops` operations weight 1/num_ops (softmax: 0,
      any constant would do; sigmoid: -ln(num_ops - 1), Single-DARTS sec. 4);
      or a finite number, used as is.
    name: the mixing (`MIXINGS`).
    num_ops: operations per edge (the alphas' last axis).

  Raises:
    ValueError: an unknown `init`, or 'uniform_weights' for a mixing that
      cannot give every operation 1/num_ops (max_w gives all of them 1).
  """
  if isinstance(init, numbers.Real) and not isinstance(init, bool):
    if not math.isfinite(init):
      raise ValueError("the initial logit must be finite")
    return float(init)
  if init == "zeros":
    return 0.0
  if init == "uniform_weights":
    if name == "softmax":
      return 0.0
    if name == "sigmoid":
      if num_ops < 2:
        raise ValueError("sigmoid weights 1/num_ops need at least 2 operations")
      return -math.log(num_ops - 1)
    raise ValueError(f"mixing {name!r} has no logit giving every operation 1/{num_ops}; "
                     "use 'zeros' or a number")
  raise ValueError(f"choose one of {', '.join(ALPHA_INITS)} or a number")


def mix(name: str, alphas: jnp.ndarray) -> jnp.ndarray:
  """Applies the mixing registered as `name` over the last axis of `alphas`."""
  return MIXINGS.get(name)(alphas)
