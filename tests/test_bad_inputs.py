"""Bad inputs a new user tries, each a one-line error from the CLI (README "Bad inputs").

Every row of `CASES` runs `jdarts.cli.main` in-process and must end with exit
status 2 and exactly one line on stderr containing the expected text. None of
them may reach the step loop (it is replaced by a failure), so none compiles
anything. `python tests/test_bad_inputs.py` prints the README table from the
same rows and the messages the CLI gives now.
"""
import contextlib
import io
import json
import os
import pickle
import sys

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
import conftest  # noqa: E402,F401  (fake devices before jax, when run as a script)
import helpers  # noqa: E402

REPO = os.path.dirname(TESTS)

# (command, arguments with {S} search config, {T} train config args, {D} scratch
# dir, expected text in the one-line error)
CASES = [
    # Config files
    ("search", "--config={D}/missing.py --workdir={D}/w", "no such file"),
    ("search", "--config={D}/folder.py --workdir={D}/w", "is a directory"),
    ("search", "--config={D}/syntax.py --workdir={D}/w", "syntax error at"),
    ("search", "--config={D}/noget.py --workdir={D}/w", "defines no get_config()"),
    ("search", "--config={D}/raises.py --workdir={D}/w", "get_config() raised RuntimeError"),
    ("search", "--config={D}/returns.py --workdir={D}/w", "returned dict"),
    ("search", "--config={S}:nope --workdir={D}/w", "get_config('nope') raised TypeError"),
    ("summary", "--config={D}/missing.py", "no such file"),
    ("search", "--workdir={D}/w", "--config is required"),
    ("search", "--config={S}", "--workdir is required"),
    ("search", "--config={S} --workdir={D}/w --bogus", "Unknown command line flag 'bogus'"),
    ("search", "--config={R}/configs/train_quickstart.py --workdir={D}/w",
     "this is not a search config"),
    ("train", "--config={R}/configs/quickstart.py --workdir={D}/w",
     "this is not a train config"),
    ("hypergrad", "--config={R}/configs/train_cifar10.py", "this is not a search config"),
    # Override keys and types
    ("search", "--config={S} --workdir={D}/w --config.batch_sise=4", "'batch_sise'"),
    ("search", "--config={S} --workdir={D}/w --config.model.init_channels=abc",
     "invalid literal for int()"),
    ("search", "--config={S} --workdir={D}/w --config.model.init_channels=4.5",
     "invalid literal for int()"),
    ("train", "{T} --workdir={D}/w --config.model.auxiliary=maybe", "Non-boolean argument"),
    # Model sizes (search space and evaluation network)
    ("search", "--config={S} --workdir={D}/w --config.model.init_channels=-4",
     "model.init_channels=-4; it must be an integer >= 1"),
    ("search", "--config={S} --workdir={D}/w --config.model.layers=0",
     "model.layers=0; it must be an integer >= 1"),
    ("search", "--config={S} --workdir={D}/w --config.model.steps=0", "model.steps=0"),
    ("search", "--config={S} --workdir={D}/w --config.model.multiplier=5",
     "model.multiplier=5; it must be an integer in 1..steps=1"),
    ("search", "--config={S} --workdir={D}/w --config.model.alpha_init_scale=nan",
     "model.alpha_init_scale=nan"),
    ("train", "{T} --workdir={D}/w --config.model.init_channels=0",
     "model.init_channels must be an integer >= 1"),
    ("train", "{T} --workdir={D}/w --config.model.layers=0",
     "model.layers must be an integer >= 1"),
    ("train", "{T} --workdir={D}/w --config.model.stem_multiplier=0",
     "model.stem_multiplier must be an integer >= 1"),
    ("train", "{T} --workdir={D}/w --config.model.drop_path_prob=nan",
     "model.drop_path_prob must be a number in [0, 1)"),
    ("train", "{T} --workdir={D}/w --config.model.drop_path_prob=1.5",
     "model.drop_path_prob must be a number in [0, 1)"),
    ("train", "{T} --workdir={D}/w --config.model.bn_momentum=2",
     "model.bn_momentum must be a number in [0, 1)"),
    ("summary", "{T} --config.model.init_channels=0", "model.init_channels must be"),
    ("summary", "{T} --config.model.layers=-1", "model.layers must be"),
    ("summary", "--config={S} --config.model.layers=0", "model.layers=0"),
    # Learning rates, optimisers, schedules
    ("search", "--config={S} --workdir={D}/w --config.optim.learning_rate=nan",
     "optim.learning_rate must be a finite number > 0.0, got nan"),
    ("search", "--config={S} --workdir={D}/w --config.optim.learning_rate=inf",
     "optim.learning_rate must be a finite number > 0.0, got inf"),
    ("search", "--config={S} --workdir={D}/w --config.optim.learning_rate=0",
     "optim.learning_rate must be a finite number > 0.0, got 0.0"),
    ("search", "--config={S} --workdir={D}/w --config.optim.learning_rate_min=-1",
     "optim.learning_rate_min must be a finite number >= 0.0"),
    ("search", "--config={S} --workdir={D}/w --config.arch.learning_rate=-1",
     "arch.learning_rate must be a finite number in (0.0, inf)"),
    ("search", "--config={S} --workdir={D}/w --config.optim.momentum=1.5",
     "optim.momentum must be a finite number in [0.0, 1.0)"),
    ("search", "--config={S} --workdir={D}/w --config.optim.weight_decay=nan",
     "optim.weight_decay must be a finite number"),
    ("search", "--config={S} --workdir={D}/w --config.optim.grad_clip=-1",
     "optim.grad_clip must be a finite number"),
    ("search", "--config={S} --workdir={D}/w --config.arch.b1=1.5", "arch.b1 must be"),
    ("search", "--config={S} --workdir={D}/w --config.optim.schedule=foo",
     "optim.schedule='foo' is unknown"),
    ("train", "{T} --workdir={D}/w --config.optim.lr_decay=nan",
     "optim.lr_decay must be a finite number > 0.0, got nan"),
    # Run length and batch
    ("search", "--config={S} --workdir={D}/w --config.batch_size=0",
     "batch_size must be an integer >= 1, got 0"),
    ("search", "--config={S} --workdir={D}/w --config.batch_size=100000",
     "cannot fill one batch of 100000"),
    ("search", "--config={S} --workdir={D}/w --config.epochs=-1",
     "epochs must be an integer >= 1, got -1"),
    ("search", "--config={S} --workdir={D}/w --config.max_steps=-1", "max_steps must be"),
    ("search", "--config={S} --workdir={D}/w --config.log_every=0", "log_every must be"),
    ("search", "--config={S} --workdir={D}/w --config.seed=-1", "seed must be"),
    ("search", "--config={S} --workdir={D}/w --config.num_seeds=0",
     "num_seeds must be an integer >= 1"),
    ("search", "--config={S} --workdir={D}/w --config.num_seeds=-2",
     "num_seeds must be an integer >= 1"),
    ("search", "--config={S} --workdir={D}/w --config.num_seeds=2.5",
     "invalid literal for int()"),
    ("search", "--config={S} --workdir={D}/w --config.num_seeds=2 "
     "--config.collapse.every_epochs=1", "runs without collapse.every_epochs"),
    ("search", "--config={S} --workdir={D}/w --config.data.seed=-2",
     "data.seed must be an integer >= -1"),
    ("train", "{T} --workdir={D}/w --config.eval_every_epochs=0", "eval_every_epochs must be"),
    ("train", "{T} --workdir={D}/w --config.eval_batch_size=-1", "eval_batch_size must be"),
    # Losses
    ("train", "{T} --workdir={D}/w --config.loss.label_smoothing=nan",
     "loss.label_smoothing must be in [0, 1)"),
    ("train", "{T} --workdir={D}/w --config.loss.label_smoothing=-0.1",
     "loss.label_smoothing must be in [0, 1)"),
    ("train", "{T} --workdir={D}/w --config.loss.auxiliary_weight=nan",
     "loss.auxiliary_weight must be a finite number >= 0"),
    # Hypergradient estimators (checked whatever arch.method is)
    ("search", "--config={S} --workdir={D}/w --config.arch.fd_eps=0",
     "arch.fd_eps must be > 0, got 0.0"),
    ("search", "--config={S} --workdir={D}/w --config.arch.fd_eps=nan",
     "arch.fd_eps must be > 0, got nan"),
    ("search", "--config={S} --workdir={D}/w --config.arch.cg_iters=0", "arch.cg_iters must be"),
    ("search", "--config={S} --workdir={D}/w --config.arch.cg_damping=-1",
     "arch.cg_damping must be >= 0"),
    ("search", "--config={S} --workdir={D}/w --config.arch.neumann_terms=-1",
     "arch.neumann_terms must be"),
    ("search", "--config={S} --workdir={D}/w --config.arch.neumann_lr=nan",
     "arch.neumann_lr must be > 0"),
    ("search", "--config={S} --workdir={D}/w --config.arch.xi=inf", "arch.xi must be"),
    ("hypergrad", "--config={S} --config.hypergrad.repeats=0", "hypergrad.repeats must be"),
    ("hypergrad", "--config={S} --config.hypergrad.fd_eps_max=nan", "hypergrad.fd_eps_min"),
    # Unknown names
    ("search", "--config={S} --workdir={D}/w --config.space=foo", "space='foo' is unknown"),
    ("search", "--config={S} --workdir={D}/w --config.data.name=mnistx",
     "data.name='mnistx' is unknown"),
    ("search", "--config={S} --workdir={D}/w --config.arch.method=zeroth",
     "arch.method='zeroth' is unknown"),
    ("search", "--config={S} --workdir={D}/w --config.model.mixing=foo",
     "model.mixing='foo' is unknown"),
    ("search", "--config={S} --workdir={D}/w --config.parallel.backend=foo",
     "parallel.backend='foo' is unknown"),
    ("search", "--config={S} --workdir={D}/w --config.model.primitives=('none','foo')",
     "unknown operation 'foo'"),
    ("search", "--config={S} --workdir={D}/w --config.arch.step_kind=foo",
     "arch.step_kind='foo' is unknown"),
    ("search", "--config={S} --workdir={D}/w --config.arch.step_kind=staged_bilevel",
     "arch.step_kind='staged_bilevel' computes finite_difference or exact_hvp"),
    ("search", "--config={S} --workdir={D}/w --config.model.dtype=float16",
     "model.dtype='float16'"),
    ("train", "{T} --workdir={D}/w --config.model.name=foo", "model.name='foo' is unknown"),
    ("train", "{T} --workdir={D}/w --config.model.depthwise=foo", "model.depthwise='foo'"),
    ("hypergrad", "--config={S} --config.hypergrad.methods=('foo',)",
     "hypergrad method 'foo' is unknown"),
    ("summary", "--config={S} --config.space=foo", "space='foo' is unknown"),
    # Data settings
    ("search", "--config={S} --workdir={D}/w --config.data.train_portion=nan",
     "data.train_portion must be in (0, 1)"),
    ("search", "--config={S} --workdir={D}/w --config.data.cutout=-1",
     "data.cutout must be an integer >= 0"),
    ("search", "--config={S} --workdir={D}/w --config.data.data_dir={D}/nowhere",
     "is not a directory"),
    ("search", "--config={S} --workdir={D}/w --config.data.name=cifar10 "
     "--config.data.data_dir={D}/empty", "tfds build cifar10"),
    ("search", "--config={S} --workdir={D}/w --config.data.name=cifar10 "
     "--config.data.data_dir={D}/cifar_truncated", "data_batch_3: is truncated"),
    ("search", "--config={S} --workdir={D}/w --config.data.name=cifar10 "
     "--config.data.data_dir={D}/cifar_html", "is not a readable CIFAR-10 pickle"),
    ("train", "{T} --workdir={D}/w --config.data.name=cifar10 "
     "--config.data.data_dir={D}/cifar_label10", "outside [0, 10)"),
    ("train", "{T} --workdir={D}/w --config.data.extra_test_sets=foo", "dataset 'foo'"),
    # Genotypes
    ("train", "{T} --workdir={D}/w --config.genotype=DARTS_V3", "Did you mean 'DARTS_V2'"),
    ("train", "{T} --workdir={D}/w --config.genotype={D}/bad.json", "not valid JSON"),
    ("train", "{T} --workdir={D}/w --config.genotype={D}/trunc.json", "not valid JSON"),
    ("train", "{T} --workdir={D}/w --config.genotype={D}/list.json",
     "a genotype must be a JSON object"),
    ("train", "{T} --workdir={D}/w --config.genotype={D}/missingkey.json", "missing key(s)"),
    ("train", "{T} --workdir={D}/w --config.genotype={D}/oddcell.json", "even number"),
    ("train", "{T} --workdir={D}/w --config.genotype={D}/empty", "has no genotype.json"),
    ("train", "{T} --workdir={D}/w --config.genotype=random:abc", "random:SEED"),
    ("summary", "{T} --config.genotype=NOPE", "neither a known genotype nor a file"),
    # Workdirs
    ("search", "--config={S} --workdir={D}/afile", "exists and is not a directory"),
    ("search", "--config={S} --workdir={D}/afile/sub", "cannot be created"),
    ("train", "{T} --workdir=/proc/jdarts", "cannot be created"),
    ("search", "--config={S} --workdir={D}/other_run", "holds a run of another config"),
    ("hypergrad", "--config={S} --workdir={D}/afile", "exists and is not a directory"),
    # Commands
    ("serch", "", "unknown command 'serch'"),
]

_TRAIN = ["--config={R}/configs/train_quickstart.py", "--config.genotype=random:0",
          "--config.model.init_channels=4", "--config.model.layers=1",
          "--config.model.stem_multiplier=1", "--config.batch_size=8", "--config.epochs=1",
          "--config.progress=False", "--config.parallel.num_devices=1",
          "--config.compilation_cache_dir="]


def make_inputs(d):
  """Writes the bad files the cases name into directory `d` (a pathlib.Path)."""
  (d / "folder.py").mkdir()
  (d / "empty").mkdir()
  (d / "syntax.py").write_text("def get_config(:\n  pass\n")
  (d / "noget.py").write_text("X = 1\n")
  (d / "raises.py").write_text("def get_config():\n  raise RuntimeError('boom')\n")
  (d / "returns.py").write_text("def get_config():\n  return {'a': 1}\n")
  (d / "afile").write_text("x")
  (d / "bad.json").write_text("{not json")
  (d / "trunc.json").write_text('{"normal": [["sep_conv_3x3", 0], ["sk')
  (d / "list.json").write_text("[1, 2]")
  (d / "missingkey.json").write_text(json.dumps({"normal": []}))
  (d / "oddcell.json").write_text(json.dumps(
      {"normal": [["sep_conv_3x3", 0]], "normal_concat": [2], "reduce": [],
       "reduce_concat": [2]}))
  good = {b"data": np.zeros((6, 3072), np.uint8), b"labels": [1] * 6}
  for name, bad in (("truncated", pickle.dumps(good)[:-3000]),
                    ("html", b"<html>404 Not Found</html>\n"),
                    ("label10", pickle.dumps({**good, b"labels": [0] * 5 + [10]}))):
    c = d / f"cifar_{name}" / "cifar-10-batches-py"
    c.mkdir(parents=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      (c / f).write_bytes(bad if f == "data_batch_3" else pickle.dumps(good))
  cfg = helpers.write_tiny_config(d)
  other = d / "other_run"  # a workdir with results of a search on CIFAR-10, 16 channels
  other.mkdir()
  c = helpers.tiny_search_config(str(d / "xla_cache"))
  c.data.name, c.model.init_channels = "cifar10", 16
  (other / "config.json").write_text(c.to_json_best_effort())
  (other / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n')
  return cfg


def argv(case, cfg, d):
  command, args, _ = case
  train = " ".join(_TRAIN).replace("{R}", REPO)
  text = args.replace("{T}", train).replace("{S}", cfg).replace("{D}", str(d)).replace(
      "{R}", REPO)
  return [command] + text.split()


def run_cli(args):
  """(exit status, stderr lines) of `jdarts ARGS` in-process."""
  from jdarts import cli
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    rc = cli.main(args)
  return rc, [l for l in err.getvalue().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("bad_inputs")
  return make_inputs(d), d


@pytest.fixture
def no_steps(monkeypatch):
  """A bad input must fail before the step loop: reaching it fails the test."""
  from jdarts import runs

  def fail(*args, **kwargs):
    raise AssertionError("a bad input reached the step loop")
  monkeypatch.setattr(runs.Run, "steps", fail)


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line(case, inputs, no_steps):
  cfg, d = inputs
  rc, err = run_cli(argv(case, cfg, d))
  assert rc == 2 and len(err) == 1, err
  assert case[2] in err[0], err[0]
  assert err[0].startswith(f"jdarts {case[0]}: error: ") or case[0] == "serch", err[0]


def _table():
  import tempfile
  import pathlib
  d = pathlib.Path(tempfile.mkdtemp())
  cfg = make_inputs(d)
  print("| # | command | input | message |\n|---|---|---|---|")
  for i, case in enumerate(CASES):
    _, err = run_cli(argv(case, cfg, d))
    shown = case[1]
    for a, b in (("--config={S} ", ""), ("{S}", "tiny.py"), ("{R}/", ""), ("{T} ", ""),
                 ("--workdir={D}/w", ""), ("{D}/", "")):
      shown = shown.replace(a, b)
    shown = shown.strip() or ("--workdir=w (no --config)" if "--workdir" in case[1]
                              else "(no arguments)")
    msg = err[0].split(": error: ", 1)[-1].replace(str(d) + "/", "").replace(REPO + "/", "")
    msg = msg.replace("|", "\\|")
    print(f"| {i + 1} | {case[0]} | `{shown}` | {msg} |")


if __name__ == "__main__":
  _table()
