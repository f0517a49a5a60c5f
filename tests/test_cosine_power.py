"""Cosine Power Annealing (sharp_darts.txt sec. 3.2, eq. 2) against the paper's formulas.

The reference values are computed here in float64 NumPy straight from eq. 1 and
eq. 2 as printed (no expm1 rewrite), so a slip in `jdarts.schedules` shows up.
"""
import math

import ml_collections
import numpy as np
import pytest

from jdarts import schedules
from jdarts.config_lib import ConfigError


def eq1(t_cur, t_total, lr_max, lr_min):
  return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t_cur / t_total))


def eq2(t_cur, t_total, lr_max, lr_min, p):
  c = 0.5 * (1 + math.cos(math.pi * t_cur / t_total))
  return lr_min + (lr_max - lr_min) * (p ** (c + 1) - p) / (p ** 2 - p)


def _optim(schedule, power, lr=0.025, lr_min=1e-8):
  return ml_collections.ConfigDict(dict(learning_rate=lr, learning_rate_min=lr_min,
                                        schedule=schedule, power=power))


@pytest.mark.parametrize("p", [2.0, 10.0])
def test_matches_eq2_per_epoch_and_per_step(p):
  epochs, spe = 20, 3
  by_epoch = schedules.make_schedule(_optim("cosine_power_by_epoch", p), epochs, spe)
  for step in (0, 1, 2, 3, 17, 30, 44, 57, 59):
    want = eq2(step // spe, epochs, 0.025, 1e-8, p)
    np.testing.assert_allclose(float(by_epoch(step)), want, rtol=1e-5, atol=1e-12)  # float32 schedule
  per_step = schedules.make_schedule(_optim("cosine_power", p), epochs, spe)
  for step in (0, 1, 13, 30, 59, 60, 100):
    want = eq2(min(step, 60), 60, 0.025, 1e-8, p)
    np.testing.assert_allclose(float(per_step(step)), want, rtol=1e-5, atol=1e-12)  # float32 schedule
  # the end points of eq. 2 are the range itself
  assert float(per_step(0)) == pytest.approx(0.025, rel=1e-6)
  assert float(per_step(60)) == pytest.approx(1e-8, rel=1e-4)


def test_power_one_is_cosine_annealing():
  epochs, spe = 10, 4
  cpa = schedules.make_schedule(_optim("cosine_power_by_epoch", 1, 0.1, 1e-3), epochs, spe)
  cos = schedules.make_schedule(_optim("cosine_by_epoch", 1, 0.1, 1e-3), epochs, spe)
  for step in range(0, 40, 3):
    np.testing.assert_allclose(float(cpa(step)), eq1(step // spe, epochs, 0.1, 1e-3),
                               rtol=1e-6)
    assert float(cpa(step)) == float(cos(step))


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 10.0, 1000.0])
def test_monotone_and_below_cosine_for_p_above_one(p):
  sched = schedules.make_schedule(_optim("cosine_power", p, 0.025, 1e-8), 50, 2)
  lrs = np.array([float(sched(s)) for s in range(101)])
  assert np.all(np.diff(lrs) <= 0), "the rate must never rise"
  assert np.all(np.diff(lrs)[:-1] < 0) or p == 1.0
  cos = np.array([eq1(s, 100, 0.025, 1e-8) for s in range(101)])
  if p > 1:
    # p > 1 decays faster than cosine in the middle (Fig. 5), equal at the ends
    assert np.all(lrs[1:-1] < cos[1:-1])


def test_validation_names_the_key():
  with pytest.raises(ConfigError, match="optim.power"):
    schedules.validate(_optim("cosine_power", 0.5))
  with pytest.raises(ConfigError, match="optim.power"):
    schedules.validate(_optim("cosine_power_by_epoch", None))
  with pytest.raises(ConfigError, match="learning_rate_min"):
    schedules.validate(_optim("cosine_power", 2.0, lr=1e-3, lr_min=1e-2))
  schedules.validate(_optim("cosine_power", 2.0))
