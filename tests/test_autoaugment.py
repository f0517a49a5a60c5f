"""AutoAugment's CIFAR-10 policy: the published probabilities, statistically, and the operations.

The sub-policy choice and the firing of each operation are drawn with a
fixed seed many times; frequencies must match 1/25 and the published
probabilities within 4.5 binomial standard deviations (a correct
implementation fails this with probability < 1e-4 per comparison).
"""
import numpy as np
import pytest

from jdarts.data import autoaugment as aa

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

N = 50_000


def test_policy_is_the_published_table():
  assert len(aa.CIFAR10_POLICY) == 25
  assert aa.CIFAR10_POLICY[0] == (("invert", 0.1, 7), ("contrast", 0.2, 6))
  assert aa.CIFAR10_POLICY[24] == (("translateY", 0.7, 9), ("autocontrast", 0.9, 1))
  assert aa.RANGES["rotate"][2] == pytest.approx(60 / 9)     # 30 degrees over 9 steps


def test_sub_policies_fire_with_the_published_probabilities():
  rng = np.random.default_rng(0)
  picks = np.zeros(25)
  fired = np.zeros((25, 2))
  for _ in range(N):
    k, chosen = aa.draw(rng)
    picks[k] += 1
    # recover which slots fired: the chosen list keeps slot order, names may repeat
    names = [c[0] for c in chosen]
    (a, _, _), (b, _, _) = aa.CIFAR10_POLICY[k]
    if len(chosen) == 2:
      fired[k] += 1
    elif len(chosen) == 1:
      # ambiguous only when both slots name the same op; count it half per slot
      if a == b:
        fired[k] += 0.5
      else:
        fired[k, 0 if names[0] == a else 1] += 1
  p_pick = 1 / 25
  assert np.all(np.abs(picks / N - p_pick) < 4.5 * np.sqrt(p_pick * (1 - p_pick) / N))
  for k, sub in enumerate(aa.CIFAR10_POLICY):
    if sub[0][0] == sub[1][0]:
      continue  # checked through the total below
    for slot in (0, 1):
      p = sub[slot][1]
      sd = np.sqrt(max(p * (1 - p), 1e-12) / picks[k])
      assert abs(fired[k, slot] / picks[k] - p) < 4.5 * sd + 1e-12, (k, slot)
  # sub-policies with a repeated op: the expected number of firings p1 + p2
  for k, sub in enumerate(aa.CIFAR10_POLICY):
    if sub[0][0] == sub[1][0]:
      mean = fired[k].sum() / picks[k]
      p1, p2 = sub[0][1], sub[1][1]
      sd = np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / picks[k])
      assert abs(mean - (p1 + p2)) < 4.5 * sd, k


@pytest.mark.parametrize("channels", [1, 3])
def test_every_operation_keeps_shape_and_dtype(channels):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (16, 16, channels), dtype=np.uint8)
  img = Image.fromarray(x[..., 0] if channels == 1 else x)
  for name, levels in aa.RANGES.items():
    for positive in (True, False):
      y = np.asarray(aa.apply_op(img, name, float(levels[9]), positive))
      assert y.shape == x.shape[:2] + ((3,) if channels == 3 else ()), name
      assert y.dtype == np.uint8
  inv = np.asarray(aa.apply_op(img, "invert", 0.0, True))
  np.testing.assert_array_equal(inv, 255 - np.asarray(img))
  sol = np.asarray(aa.apply_op(img, "solarize", 128.0, True))
  np.testing.assert_array_equal(sol, np.where(np.asarray(img) >= 128, 255 - np.asarray(img),
                                              np.asarray(img)))


def test_transform_is_seeded_and_shaped():
  t = aa.AutoAugmentTransform(crop_padding=4, flip=True)
  imgs = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  a = t(list(imgs), list(range(6)))
  b = t(list(imgs), list(range(6)))
  assert a.shape == imgs.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, t(list(imgs), list(range(6, 12))))
