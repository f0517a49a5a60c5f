"""How architecture parameters weight the candidate operations of a mixed edge.

Each mixing is a pure function `weights = mix(alphas)` applied over the last
axis (the candidate operations), looked up by name in `MIXINGS`:

* 'softmax'  DARTS (paper eq. 2): w = softmax(alpha).
* 'sigmoid'  Single-DARTS (sec. 3.3): w = sigmoid(alpha), non-competitive.
* 'max_w'    sharpDARTS Max-W weighting (eq. 3): w' = 1 - max(w) + w with
             w = softmax(alpha); the strongest op gets weight exactly 1.

Users add their own with `MIXINGS.register('name', fn)`.
"""
from __future__ import annotations

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


def mix(name: str, alphas: jnp.ndarray) -> jnp.ndarray:
  """Applies the mixing registered as `name` over the last axis of `alphas`."""
  return MIXINGS.get(name)(alphas)
