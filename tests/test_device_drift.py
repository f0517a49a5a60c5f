"""One device and four agree over ten search steps on digit images (issue 11, part 5).

Same global batches (real 8x8 digits: many exact zeros, so max-pool ties and
ReLU kinks are there), one device against four fake CPU devices with
cross-replica BatchNorm moments. The alphas after every step must agree to
1e-4 of their largest entry; README "One device or four" has the measurement
on the quickstart.
"""
import jax
import numpy as np

import helpers
from jdarts import experiment, parallel, search


def _run(cfg, data_info, batches, n):
  axis = parallel.AXIS if n > 1 else None
  space = experiment.build_space(cfg, data_info, bn_axis_name=axis)
  sched, w_opt, a_opt, state = experiment.init_search(cfg, space, 100)
  step = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched, axis_name=axis,
                                 weight_decay=cfg.optim.weight_decay, optim_cfg=cfg.optim)
  ps = parallel.ParallelStep(step, backend="pmap" if axis else "none",
                             devices=jax.local_devices()[:n])
  s, out = ps.put_state(state), []
  for tb, vb in batches:
    s, m = ps(s, tb, vb)
    a = jax.device_get(ps.get_state(s).alphas)
    out.append((np.concatenate([np.ravel(a[k]) for k in sorted(a)]),
                float(jax.device_get(ps.get_metrics(m))["grad_norm"])))
  return out


def test_one_and_four_devices_agree_over_ten_steps():
  assert jax.local_device_count() >= 4
  cfg = helpers.tiny_search_config(batch_size=16)
  data = experiment.build_data(cfg)
  batches = [(next(data.train), next(data.val)) for _ in range(10)]
  one = _run(cfg, data.info, batches, 1)
  four = _run(cfg, data.info, batches, 4)
  for i, ((a1, g1), (a4, g4)) in enumerate(zip(one, four)):
    assert np.abs(a4 - a1).max() <= 1e-4 * np.abs(a1).max(), f"step {i + 1}"
    assert abs(g4 - g1) <= 1e-4 * g1, f"grad_norm, step {i + 1}"
  assert np.abs(one[-1][0]).max() > 1e-2  # the alphas moved
