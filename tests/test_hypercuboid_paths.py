"""Best-path derivation on a HyperCuboid against brute force over every path."""
import itertools

import numpy as np
import pytest

from jdarts.spaces.hypercuboid import paths


def brute_force(w):
  S, K, _, P = w.shape
  best = None
  for scales in itertools.product(range(K), repeat=S + 1):
    for prims in itertools.product(range(P), repeat=S):
      score = sum(w[s, scales[s], scales[s + 1], prims[s]] for s in range(S))
      if best is None or score > best[0]:
        best = (score, list(scales), list(prims))
  return best


def test_hand_made_tensor():
  """2 stages, scales {32, 64}, primitives {SharpSepConv, MaxPool}; the greedy path is wrong."""
  w = np.zeros((2, 2, 2, 2))
  w[0, 0, 0, 0] = 0.5     # greedy first step: 32 -> 32 SharpSepConv ...
  w[1, 0, 1, 1] = 0.1     # ... then at best 0.1
  w[0, 1, 1, 1] = 0.4     # best: 64 -> 64 pool (0.4), 64 -> 32 SharpSepConv (0.9)
  w[1, 1, 0, 0] = 0.9
  p = paths.best_path(w)
  assert (p.scales, p.primitives) == ([1, 1, 0], [1, 0])
  assert p.score == pytest.approx(1.3)
  assert brute_force(w)[1:] == (p.scales, p.primitives)


@pytest.mark.parametrize("seed,shape", [(0, (3, 3, 3, 2)), (1, (4, 2, 2, 3)), (2, (2, 4, 4, 2))])
def test_random_tensors_equal_brute_force(seed, shape):
  w = np.random.RandomState(seed).rand(*shape)
  p = paths.best_path(w)
  score, scales, prims = brute_force(w)
  assert p.score == pytest.approx(score, abs=1e-12)
  assert (p.scales, p.primitives) == (scales, prims)
  assert paths.path_score(w, p.scales, p.primitives) == pytest.approx(p.score)
