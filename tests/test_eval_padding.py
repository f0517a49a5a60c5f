"""Held-out evaluation of the search supernet ignores the padding rows (issue 11, part 2).

The supernet normalises with the moments of its batch (paper A.1.1), so the 23
zero rows padding the digits test split's last batch of 32 (9 real rows) would
move the predictions of the real rows. `evaluation.evaluate` must give what the
same images give in batches without padding, computed here batch by batch
without going through `evaluate`.
"""
import jax
import numpy as np

import helpers
from jdarts import data, evaluation


def test_padded_evaluation_equals_unpadded_batches():
  source = data.load_source("digits", "test")
  info = data.get_info("digits")
  batches = list(data.make_eval_iterator(source, info, batch_size=32))
  assert int(batches[-1]["mask"].sum()) == len(source) % 32 == 9
  space = helpers.make_space(helpers.tiny_model(), image_shape=info.image_shape,
                             num_classes=info.num_classes)
  params = space.init(jax.random.PRNGKey(0), batches[0])
  alphas = jax.tree_util.tree_map(
      lambda a: 0.5 * np.random.RandomState(1).randn(*a.shape).astype(a.dtype),
      space.init_alphas(jax.random.PRNGKey(1)))
  step = jax.jit(evaluation.make_eval_step(space))
  got = evaluation.evaluate(space, step, params, alphas, batches, batch_size=32)

  key = jax.random.PRNGKey(0)  # `evaluate`'s default key, folded with the batch index
  sums, padded_last = [], None
  for i, b in enumerate(batches):
    n = int(b["mask"].sum())
    real = {"image": b["image"][:n], "label": b["label"][:n],
            "mask": np.ones(n, np.float32)}
    sums.append(step(params, alphas, real, jax.random.fold_in(key, i), None)[0])
    if n < len(b["mask"]):
      padded_last = step(params, alphas, b, jax.random.fold_in(key, i), None)[0]
  want = evaluation.finish(evaluation.accumulate(sums), space.metric_names)
  assert got["count"] == want["count"] == len(source)
  assert got["accuracy"] == want["accuracy"]
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
  # Control: fed with its padding, the last batch's real rows score otherwise.
  unpadded_last = jax.device_get(sums[-1])
  padded_last = jax.device_get(padded_last)
  assert abs(float(padded_last["loss"]) - float(unpadded_last["loss"])) > 1e-3
