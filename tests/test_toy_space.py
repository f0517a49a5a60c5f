"""A search space defined entirely in this file runs through `jdarts search` (issue 10).

`ToyCellSpace` is a two-node cell over a small MLP, written in plain JAX (no
Flax), registered here and nowhere else. It uses everything the protocol
offers: its own metric names, dropout from the step's rng, and a carry (the
hidden features of the previous batch of each stream, fed back into the next
one), so the tests below show that the step, the loop, the CLI and
checkpointing carry a new space without any edit outside this file.
"""
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from jdarts import cli
from jdarts import search
from jdarts import spaces
from jdarts.config_lib import ConfigError

OPS = ("zero", "identity", "tanh", "relu")
# (target node, source state): state 0 is the stem's features, 1 is node 1.
EDGES = ((1, 0), (2, 0), (2, 1))


@spaces.SPACES.register("toy_mlp_cell", overwrite=True)
class ToyCellSpace(spaces.SpaceBase):
  """Images -> flatten -> stem (H) -> a two-node cell of mixed edges -> logits.

  alphas = {'cell': (3 edges, 4 ops)}; carry: (B, H) stem features of the
  previous batch, entering the next stem with weight 0.1.
  """
  name = "toy_mlp_cell"
  metric_names = ("accuracy", "carry_norm")

  def __init__(self, input_shape, num_classes, hidden, dropout):
    self.input_shape, self.num_classes = tuple(input_shape), num_classes
    self.hidden, self.dropout = hidden, dropout

  @classmethod
  def validate_config(cls, model_cfg):
    hidden, dropout = model_cfg.get("hidden"), model_cfg.get("dropout")
    if not (isinstance(hidden, int) and hidden >= 1):
      raise ConfigError(f"model.hidden must be an integer >= 1, got {hidden!r}.")
    if not (isinstance(dropout, float) and 0.0 <= dropout < 1.0):
      raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}.")

  @classmethod
  def from_config(cls, model_cfg, info, *, bn_axis_name=None):
    del bn_axis_name  # no normalisation layers
    return cls(info.image_shape, info.num_classes, model_cfg["hidden"],
               model_cfg["dropout"])

  def example_batch(self, batch_size):
    return {"image": jnp.zeros((batch_size,) + self.input_shape, jnp.float32),
            "label": jnp.zeros((batch_size,), jnp.int32)}

  def init(self, rng, batch):
    d, h = math.prod(self.input_shape), self.hidden
    ks = jax.random.split(rng, 2 + 2 * len(EDGES))
    params = {"stem": jax.random.normal(ks[0], (d, h)) / math.sqrt(d),
              "head": jax.random.normal(ks[1], (h, self.num_classes)) / math.sqrt(h)}
    for e in range(len(EDGES)):
      for j, op in enumerate(("tanh", "relu")):
        params[f"edge{e}_{op}"] = jax.random.normal(ks[2 + 2 * e + j], (h, h)) / math.sqrt(h)
    return params

  def init_alphas(self, rng):
    return {"cell": 1e-3 * jax.random.normal(rng, (len(EDGES), len(OPS)))}

  def init_carry(self, batch_size):
    return jnp.zeros((batch_size, self.hidden), jnp.float32)

  def loss(self, params, alphas, batch, rng, carry):
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    stem = jnp.tanh(x @ params["stem"] + 0.1 * carry)
    keep = jax.random.bernoulli(rng, 1.0 - self.dropout, stem.shape)
    states = [jnp.where(keep, stem / (1.0 - self.dropout), 0.0)]
    w = jax.nn.softmax(alphas["cell"], axis=-1)
    node = {1: 0.0, 2: 0.0}
    for e, (target, source) in enumerate(EDGES):
      h = states[source]
      outs = (jnp.zeros_like(h), h, jnp.tanh(h @ params[f"edge{e}_tanh"]),
              jax.nn.relu(h @ params[f"edge{e}_relu"]))
      node[target] = node[target] + sum(w[e, k] * o for k, o in enumerate(outs))
      if e == 0:  # node 1 has its only input: it becomes state 1
        states.append(node[1])
    logits = node[2] @ params["head"]
    onehot = jax.nn.one_hot(batch["label"], self.num_classes)
    per_example = -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
    mask = batch.get("mask", jnp.ones_like(per_example))
    count = jnp.maximum(jnp.sum(mask), 1.0)
    loss = jnp.sum(per_example * mask) / count
    acc = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask) / count
    carry_norm = jnp.mean(jnp.linalg.norm(carry, axis=-1))
    aux = {"loss": loss, "accuracy": acc, "carry_norm": carry_norm, "count": jnp.sum(mask)}
    return loss, aux, stem

  def derive(self, alphas):
    a = np.asarray(alphas["cell"])
    return [(OPS[1 + int(np.argmax(a[e, 1:]))], t, s) for e, (t, s) in enumerate(EDGES)]

  def genotype_json(self, genotype):
    return {"edges": [list(edge) for edge in genotype]}

  def format_genotype(self, genotype):
    return " ".join(f"{s}->{t}:{op}" for op, t, s in genotype)


_CONFIG = '''import sys
sys.path.insert(0, {tests_dir!r})
import helpers
import ml_collections
import test_toy_space  # registers the space, as a user's own module would


def get_config():
  c = helpers.tiny_search_config({cache!r})
  c.space = "toy_mlp_cell"
  c.model = ml_collections.ConfigDict(dict(hidden=8, dropout=0.2))
  c.data.augment = False
  c.log_every = 2
  c.checkpoint.every_steps = 2
  return c
'''


@pytest.fixture(scope="module")
def toy_config(tmp_path_factory):
  d = tmp_path_factory.mktemp("toy")
  path = d / "toy.py"
  path.write_text(_CONFIG.format(tests_dir=helpers.__file__.rsplit("/", 1)[0],
                                 cache=str(d / "xla_cache")))
  return str(path)


def _search(config, workdir, *args):
  return cli.main(["search", f"--config={config}", f"--workdir={workdir}", *args])


def _alphas(workdir):
  return np.asarray(json.loads((workdir / "alphas.json").read_text())["cell"])


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_the_toy_space_satisfies_the_protocol():
  from jdarts import data
  info = data.DatasetInfo("t", (8, 8, 1), 10, (0.5,), (0.25,))
  space = spaces.get_space("toy_mlp_cell", {"hidden": 8, "dropout": 0.2}, info)
  assert isinstance(space, spaces.SearchSpace)
  with pytest.raises(ConfigError, match="model.hidden must be an integer >= 1, got 0"):
    spaces.get_space("toy_mlp_cell", {"hidden": 0, "dropout": 0.2}, info)


# first_order resume is also pinned on the DARTS CNN (tests/test_resume.py) and the
# recurrent space (tests/test_rnn_search_cli.py); here it runs with --runslow, as
# single_level and exact_hvp (the same checkpoint machinery with another step kind;
# suite time). finite_difference runs the staged step ('auto' on CPU: several programs),
# as exact_hvp does.
@pytest.mark.parametrize("method", [pytest.param("first_order", marks=pytest.mark.slow),
                                    pytest.param("exact_hvp", marks=pytest.mark.slow),
                                    "finite_difference",
                                    pytest.param("single_level", marks=pytest.mark.slow)])
def test_cli_search_resume_equals_uninterrupted(toy_config, tmp_path, capsys, method):
  """2 steps, then a rerun to 4, ends where one 4-step run ends; outputs use the space's names."""
  m = f"--config.arch.method={method}"
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  assert _search(toy_config, whole, m, "--config.max_steps=4") == 0
  assert _search(toy_config, parts, m, "--config.max_steps=2") == 0
  first_half = _alphas(parts)
  assert _search(toy_config, parts, m, "--config.max_steps=4") == 0
  captured = capsys.readouterr()
  out = captured.out
  np.testing.assert_array_equal(_alphas(parts), _alphas(whole))
  assert np.abs(_alphas(whole) - first_half).max() > 0, "the resumed steps moved nothing"
  # The space's own metrics, its carry in use after the first step, its genotype format.
  rows = [r for r in _rows(parts) if r["kind"] == "train"]
  assert [r["step"] for r in rows] == [2, 4]
  assert {"train_accuracy", "val_accuracy", "train_carry_norm", "val_carry_norm"} <= set(rows[0])
  assert all(r["train_carry_norm"] > 0 for r in rows)
  # A resumed run logs exactly what the uninterrupted one logged.
  same = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "images_per_sec")}
                     for r in rs if r["kind"] == "train"]
  assert same(_rows(parts)) == same(_rows(whole))
  genotype = json.loads((parts / "genotype.json").read_text())
  assert [tuple(e[1:]) for e in genotype["edges"]] == list(EDGES)
  assert all(e[0] in OPS[1:] for e in genotype["edges"])
  summary = json.loads((parts / "summary.json").read_text())
  assert 0.0 <= summary["test_accuracy"] <= 1.0 and "test_carry_norm" in summary
  assert "supernet test accuracy" in out
  if method in search.STAGED_METHODS and jax.default_backend() == "cpu":
    assert "step kind staged_bilevel" in captured.err


def test_the_carry_and_the_rng_are_in_the_checkpoint(toy_config, tmp_path):
  """The restored state holds the carries of both streams and steps the same keys."""
  from jdarts import checkpoint, experiment
  from jdarts.cli import _parse
  workdir = tmp_path / "run"
  assert _search(toy_config, workdir, "--config.max_steps=2") == 0
  cfg, _ = _parse([f"--config={toy_config}"], require_workdir=False)
  data = experiment.build_data(cfg)
  space = experiment.build_space(cfg, data.info)
  template = experiment.init_search(cfg, space, experiment.steps_per_epoch(cfg, data)).state
  with checkpoint.Checkpointer(str(workdir / "checkpoints")) as ckpt:
    state, _, step = ckpt.restore_latest(jax.device_get(template))
  assert step == 2 and set(state.carry) == {"train", "val"}
  assert state.carry["train"].shape == (cfg.batch_size, 8)
  assert np.abs(state.carry["train"]).max() > 0 and np.abs(state.carry["val"]).max() > 0
  assert not np.array_equal(state.carry["train"], state.carry["val"])


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_carry_is_split_over_devices_like_the_batch(backend):
  """Two devices equal one: each device carries its own rows (dropout off, no BN)."""
  from jdarts import data, optim, parallel, schedules, search
  cfg = helpers.tiny_search_config()
  info = data.DatasetInfo("t", (8, 8, 1), 10, (0.5,), (0.25,))
  space = spaces.get_space("toy_mlp_cell", {"hidden": 8, "dropout": 0.0}, info)
  sched = schedules.make_schedule(cfg.optim, 1, 10)
  w_opt, a_opt = optim.weight_optimizer(cfg.optim, sched), optim.arch_optimizer(cfg.arch)
  rng = np.random.RandomState(0)
  batches = [{"image": rng.randn(8, 8, 8, 1).astype(np.float32),
              "label": rng.randint(0, 10, 8).astype(np.int32)} for _ in range(4)]
  state = search.init_state(space, jax.random.PRNGKey(0), batches[0], w_opt, a_opt)

  def run(axis, backend, n):
    step = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched, axis_name=axis)
    ps = parallel.ParallelStep(step, backend=backend, devices=jax.local_devices()[:n])
    s = ps.put_state(jax.device_get(state))
    for i in range(2):
      s, _ = ps(s, batches[2 * i], batches[2 * i + 1])
    return jax.device_get(ps.get_state(s))

  one, two = run(None, "none", 1), run(parallel.AXIS, backend, 2)
  assert two.carry["train"].shape == (8, 8)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  # The rows differ between halves: a replicated carry would fail the comparison.
  assert not np.allclose(one.carry["train"][:4], one.carry["train"][4:])


def test_summary_and_hypergrad_commands_see_only_the_protocol(toy_config, tmp_path, capsys):
  """`jdarts summary` counts the toy's weights; `jdarts hypergrad` compares its estimators."""
  assert cli.main(["summary", f"--config={toy_config}", "--json"]) == 0
  s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  d, h, k = 64, 8, 10  # 8x8x1 digits, hidden 8, 10 classes
  assert s["params"] == d * h + h * k + 2 * len(EDGES) * h * h
  assert s["alphas"] == len(EDGES) * len(OPS)
  assert s["mult_adds"] == d * h + h * k + 2 * len(EDGES) * h * h  # one image, matmuls
  workdir = tmp_path / "hg"
  assert cli.main(["hypergrad", f"--config={toy_config}", f"--workdir={workdir}",
                   "--config.hypergrad.methods=first_order,exact_hvp",
                   "--config.hypergrad.fd_sweep=False", "--config.hypergrad.repeats=1",
                   "--config.arch.virtual_step=sgd"]) == 0
  rows = {r["method"]: r for r in json.loads((workdir / "hypergrad.json").read_text())["rows"]}
  # Plain-SGD virtual step: the exact HVP equals autodiff through the step.
  assert rows["exact_hvp"]["rel_err"] < 1e-4, rows["exact_hvp"]
  assert rows["first_order"]["rel_err"] > 10 * rows["exact_hvp"]["rel_err"]
