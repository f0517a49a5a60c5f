"""Held-out evaluation of the search supernet ignores the padding rows (issue 11, part 2).

The supernet normalises with the moments of its batch (paper A.1.1), so the 23
zero rows padding the digits test split's last batch of 32 (9 real rows) would
move the predictions of the real rows. `evaluation.evaluate` must give what the
same images give in batches without padding, computed here batch by batch
without going through `evaluate`.
"""
import jax
import pytest
import numpy as np

import helpers
from jdarts import data, evaluation


def _digits_batches(batch_size):
  source = data.load_source("digits", "test")
  info = data.get_info("digits")
  return source, info, list(data.make_eval_iterator(source, info, batch_size=batch_size))


def _weights(space, batch):
  """Initial weights and non-uniform alphas (0.5 N(0, 1)) of `space`."""
  params = space.init(jax.random.PRNGKey(0), batch)
  alphas = jax.tree_util.tree_map(
      lambda a: 0.5 * np.random.RandomState(1).randn(*a.shape).astype(a.dtype),
      space.init_alphas(jax.random.PRNGKey(1)))
  return params, alphas


def test_padded_evaluation_equals_unpadded_batches():
  source, info, batches = _digits_batches(32)
  assert int(batches[-1]["mask"].sum()) == len(source) % 32 == 9
  space = helpers.make_space(helpers.tiny_model(), image_shape=info.image_shape,
                             num_classes=info.num_classes)
  params, alphas = _weights(space, batches[0])
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


def _pad(batch, n):
  """`batch` with only its first n rows real: the rest zeroed and masked out."""
  rows = len(batch["mask"])
  keep = (np.arange(rows) < n)
  return {"image": batch["image"] * keep[:, None, None, None].astype(np.float32),
          "label": np.where(keep, batch["label"], 0),
          "mask": keep.astype(np.float32)}


@pytest.mark.parametrize("backend", ["pmap", pytest.param("shard_map", marks=pytest.mark.slow)])
def test_device_parallel_evaluation_equals_one_device(backend):
  """4 devices, BatchNorm moments averaged across them, padded batches == 1 device unpadded.

  The batches: three full ones, one with 12 real rows of 32 (splits over the
  4 devices: runs parallel on its real rows) and the split's last (9 real
  rows: runs on one device).
  """
  source, info, full = _digits_batches(32)
  batches = full[:3] + [_pad(full[3], 12), full[-1]]
  assert int(batches[-1]["mask"].sum()) == 9
  kw = dict(image_shape=info.image_shape, num_classes=info.num_classes)
  single = helpers.make_space(helpers.tiny_model(), **kw)
  across = helpers.make_space(helpers.tiny_model(bn_axis_name="batch"), **kw)
  params, alphas = _weights(single, batches[0])
  one = jax.jit(evaluation.make_eval_step(single))
  want = evaluation.evaluate(single, one, params, alphas, batches, batch_size=32)
  step = evaluation.ParallelEval(across, single, backend=backend, devices=jax.devices()[:4])
  got = evaluation.evaluate(across, step, params, alphas, batches, batch_size=32)
  assert got["count"] == want["count"] == 3 * 32 + 12 + 9
  assert got["accuracy"] == want["accuracy"]
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  # Control: the 12-row batch fed with its padding across the devices scores otherwise.
  key = jax.random.PRNGKey(0)
  padded = jax.device_get(step(params, alphas, batches[3], key, None)[0])
  cut, _ = evaluation.unpadded(batches[3], None)
  real = jax.device_get(one(params, alphas, cut, key, None)[0])
  assert float(padded["count"]) == float(real["count"]) == 12
  assert abs(float(padded["loss"]) - float(real["loss"])) > 1e-3 * float(real["count"])


def test_parallel_eval_refuses_one_device_backend():
  info = data.get_info("digits")
  space = helpers.make_space(helpers.tiny_model(), image_shape=info.image_shape,
                             num_classes=info.num_classes)
  with pytest.raises(ValueError, match=r"parallel\.jit\(make_eval_step"):
    evaluation.ParallelEval(space, space, backend="none")


def test_warm_up_compiles_what_the_final_evaluation_needs():
  """`WarmUp` compiles the full- and the cut last-batch programs in a thread
  (as a search does beside its first step); `evaluate` then compiles nothing
  and gives the same numbers."""
  source, info, batches = _digits_batches(32)
  space = helpers.make_space(helpers.tiny_model(), image_shape=info.image_shape,
                             num_classes=info.num_classes)
  params, alphas = _weights(space, batches[0])
  # Placed as a search's final state is: outputs of a jitted computation.
  params, alphas = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x + 0, t))((params, alphas))
  sets = {"test": lambda: data.make_eval_iterator(source, info, batch_size=32)}
  samples = evaluation.distinct_batches(sets, 32, space)
  assert [len(b["label"]) for b, _ in samples] == [32, 9]  # the last batch cut to its rows
  step = jax.jit(evaluation.make_eval_step(space))
  copy = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x.copy(), t))
  warm = evaluation.WarmUp(step, *copy((params, alphas)), samples)
  warm.join()
  assert warm.error is None
  programs = step._cache_size()  # pylint: disable=protected-access
  assert programs == 2
  got = evaluation.evaluate(space, step, params, alphas, sets["test"](), batch_size=32)
  assert step._cache_size() == programs  # pylint: disable=protected-access
  want = evaluation.evaluate(space, jax.jit(evaluation.make_eval_step(space)), params, alphas,
                             batches, batch_size=32)
  assert got == want
