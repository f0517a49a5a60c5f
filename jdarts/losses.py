"""Classification losses shared by the search spaces and the training of discrete networks.

Kept apart from any network so that `jdarts.train` (evaluation networks) and
the search spaces use one definition of the loss and of the metrics they log.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, mask=None, label_smoothing: float = 0.0):
  """Mean cross-entropy and accuracy of logits against integer labels.

  Args:
    logits: (N, K) class scores, any float dtype (computed in at least float32).
    labels: (N,) int class indices.
    mask: optional (N,) weights, 0 on padding rows of an evaluation batch,
      which are left out of every mean.
    label_smoothing: optax label smoothing of the one-hot targets.

  Returns:
    (loss, aux) with aux = {'loss', 'accuracy', 'count'} float32 scalars;
    'count' is the number of real (unmasked) examples.
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  per_example = optax.softmax_cross_entropy(logits, onehot)
  correct = (jnp.argmax(logits, -1) == labels).astype(logits.dtype)
  if mask is None:
    mask = jnp.ones_like(per_example)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  loss = jnp.sum(per_example * mask) / count
  acc = jnp.sum(correct * mask) / count
  return loss, {"loss": loss, "accuracy": acc, "count": jnp.sum(mask)}


__all__ = ["cross_entropy"]
