"""MultiChannelNet (sharp_darts.txt sec. 4.1, Fig. 6, Table 4).

Independent references: Table 4's parameter counts of the three published
paths (the reference's MULTI_CHANNEL_SCALAR_PATH, _HANDMADE_PATH and
_MAX_W_PATH in ahundt/sharpDARTS cnn/genotypes.py, transcribed below as
channel/primitive lists), and brute force over every path of a tiny supernet
for `derive`.
"""
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from jdarts import cli
from jdarts import models
from jdarts.spaces.hypercuboid import network as net_lib
from jdarts.spaces.hypercuboid import path_network

SSC, POOL = "SharpSepConv", "ResizablePool"
# stem channels then (primitive, channels out) per stage, from the reference's paths.
PUBLISHED = {
    "scalar": ([32, 32, 128, 128, 32, 256, 256, 256, 256],
               [SSC, POOL, SSC, POOL, POOL, POOL, POOL, POOL], 0.8e6),
    "handmade": ([32, 32, 64, 64, 128, 128, 256, 256, 256],
                 [SSC, POOL, SSC, POOL, SSC, POOL, SSC, POOL], 1.0e6),
    "max_w": ([256, 128, 256, 32, 256, 256, 256, 256, 256],
              [POOL, POOL, POOL, POOL, SSC, POOL, POOL, POOL], 0.9e6),
}


def _count(name):
  channels, prims, _ = PUBLISHED[name]
  net = path_network({"channels": channels, "primitives": prims}, 10)
  v = jax.eval_shape(lambda k: net.init(k, jnp.zeros((1, 32, 32, 3)), train=False),
                     jax.random.PRNGKey(0))
  return models.count_params(v["params"])["params"]


def test_published_paths_against_table4_sizes():
  """Handmade: 1,035,882 = Table 4's 1.0M. Scalar and Max-W: 862,890 and 1,033,802
  here against Table 4's 0.8M and 0.9M: the order (Scalar < Max-W) holds, the
  values do not; the reference at HEAD builds path networks through the whole
  supernet class, so the network behind Table 4's counts is not recoverable
  from its code (reported as an open discrepancy)."""
  assert round(_count("handmade") / 1e6, 1) == 1.0
  assert _count("scalar") < _count("max_w")


def test_handmade_path_is_the_reference_one():
  channels, prims = net_lib.handmade_path((32, 64, 128, 256), 4)
  assert (channels, prims) == tuple(PUBLISHED["handmade"][:2])


def test_derive_is_the_best_path_of_the_mixed_weights():
  s = helpers.make_space(dict(min_channels=4, num_scales=2, layers=1, final_filters=8,
                              mixing="max_w"), space="multichannel")
  rng = np.random.RandomState(0)
  alphas = {k: jnp.asarray(rng.normal(size=s.alpha_shape)) for k in ("normal", "reduce")}
  g = s.derive(alphas)
  w = np.asarray(net_lib.stage_weights(alphas, "max_w"))      # (2, 2, 2, 2)
  best = max((sum(w[t, c[t], c[t + 1], p[t]] for t in range(2)), c, p)
             for c in itertools.product(range(2), repeat=3)
             for p in itertools.product(range(2), repeat=2))
  assert g["channels"] == [4 * 2 ** i for i in best[1]]
  assert g["primitives"] == [net_lib.PRIMITIVES[i] for i in best[2]]
  assert g["score"] == pytest.approx(best[0])
  # max_w over a layer: one stage entry has weight exactly 1
  assert np.sum(w[0] == 1.0) == 1 and np.sum(w[1] == 1.0) == 1


@pytest.mark.parametrize("method", [
    "first_order",
    # Second-order compilation takes minutes on 2 CPU cores; --runslow.
    pytest.param("exact_hvp", marks=pytest.mark.slow)])
def test_quickstart_multichannel_searches(tmp_path, method):
  """configs/quickstart_multichannel.py for 2 steps through the CLI, both gradient orders."""
  rc = cli.main(["search", "--config=configs/quickstart_multichannel.py",
                 f"--workdir={tmp_path / 'run'}", "--config.max_steps=2",
                 f"--config.arch.method={method}", "--config.progress=False",
                 "--config.checkpoint.enabled=False", "--config.batch_size=8",
                 f"--config.compilation_cache_dir={tmp_path / 'xla'}"])
  assert rc == 0
  g = json.loads((tmp_path / "run" / "genotype.json").read_text())
  assert len(g["channels"]) == 3 and set(g["primitives"]) <= {SSC, POOL}
