"""The refactored search step against one step of the pre-refactor code (issue 10).

tests/fixtures/step_fixture.npz was written by tests/fixtures/make_step_fixture.py
at commit aa180ad: a tiny search state, its first train/val batches, and the state
and metrics after one `first_order` and one `exact_hvp` step. Today's step on
the same state and batches must give the same new state and metrics to float
round-off. The fixture's virtual step was the real update with its clip, which
issue 11 renamed 'real_update' (the default became the reference's, unclipped):
the step is pinned under that name. `grad_clipped` came later than the fixture.

Tolerance: the search BatchNorm's variance became two-pass in issue 11 as well.
On this fixture's `first_order` step the old single-pass float32 state is
1.5e-5 (max abs, optimiser state) from the same step in float64, the two-pass
one 1.5e-6: the fixture itself carries the old round-off, so states are
compared to ATOL, not to 1e-6.
"""
import os

import jax
import numpy as np
import pytest

import helpers
from jdarts import experiment
from jdarts import search as search_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "step_fixture.npz")
ATOL = 3e-5


def _fill(prefix, template, saved):
  """`template` with every leaf replaced by `saved[prefix + keypath]`."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, leaf in paths:
    key = prefix + jax.tree_util.keystr(path)
    assert key in saved, f"fixture lacks {key}: the state's layout changed"
    value = saved[key]
    assert value.shape == np.shape(leaf), key
    leaves.append(value)
  return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.fixture(scope="module")
def setup():
  saved = dict(np.load(FIXTURE))
  cfg = helpers.tiny_search_config()
  data = experiment.build_data(cfg)
  space = experiment.build_space(cfg, data.info)
  spe = int(saved["steps_per_epoch"])
  built = experiment.init_search(cfg, space, spe)
  state = _fill("state", built.state, saved)
  tb = {k: saved[f"train_batch['{k}']"] for k in ("image", "label")}
  vb = {k: saved[f"val_batch['{k}']"] for k in ("image", "label")}
  return cfg, space, built, state, tb, vb, saved


# exact_hvp against unrolled is tests/test_search.py's; this pin of the pre-refactor
# exact_hvp step (15 s) runs with --runslow.
@pytest.mark.parametrize("method", ["first_order",
                                    pytest.param("exact_hvp", marks=pytest.mark.slow)])
def test_step_equals_pre_refactor_step(setup, method):
  cfg, space, built, state, tb, vb, saved = setup
  arch = cfg.arch.copy_and_resolve_references()
  arch.method = method
  arch.virtual_step = "real_update"
  step = jax.jit(search_lib.make_search_step(space, arch, built.w_opt, built.a_opt,
                                            built.schedule, optim_cfg=cfg.optim))
  new, metrics = step(state, tb, vb)
  # Metrics added after the fixture was taken.
  metrics = {k: v for k, v in metrics.items() if k not in ("grad_clipped", "param_norm")}
  expected = _fill(f"{method}/state", new, saved)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(new)[0],
                               jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=ATOL,
                               err_msg=jax.tree_util.keystr(path))
  assert sorted(metrics) == sorted(k.split("'")[1] for k in saved
                                   if k.startswith(f"{method}/metrics"))
  for k, v in metrics.items():
    np.testing.assert_allclose(float(v), saved[f"{method}/metrics['{k}']"], rtol=2e-5,
                               atol=1e-6, err_msg=k)
  # The step moved the alphas: the comparison is not between two unchanged states.
  assert np.abs(np.asarray(new.alphas["normal"]) - state.alphas["normal"]).max() > 1e-6
