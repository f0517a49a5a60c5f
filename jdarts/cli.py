"""The `jdarts` command: parses flags and calls into the library.

    jdarts search --config=configs/quickstart.py --workdir=runs/quickstart \
        [--config.key=value ...]

Exit status and what the user sees:

* 0: done.
* 2: an error the user can fix (bad config file, key or value, missing or bad
  data, bad workdir, a checkpoint of another model): one line naming what is
  wrong and the fix.
* 1: the run failed while running: a NaN/inf loss, or a checkpoint that
  could not be written (e.g. disk full); one line naming the step and the last
  good checkpoint.
* 3: anything unexpected (a bug): one line plus the path of a log file
  holding the full traceback (`workdir/jdarts-error.log`, or a temporary file
  when there is no workdir); `--debug` also prints the traceback.
* 128+N: stopped by signal N (SIGTERM, SIGINT) after saving a checkpoint.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from typing import List, Optional

COMMANDS = ("search", "hypergrad", "summary", "train", "plot")

USAGE = """usage: jdarts COMMAND --config=configs/NAME.py[:variant] --workdir=DIR [--config.key=value ...]

commands:
  search   run an architecture search; writes DIR/genotype.json, DIR/alphas.json,
           DIR/metrics.jsonl, DIR/summary.json and DIR/config.json
           (--config.arch.method=first_order|exact_hvp|finite_difference|...;
           --config.hypergrad_probe_every=N also writes DIR/hypergrad_probe.jsonl;
           --config.num_seeds=K runs seeds seed..seed+K-1 in one program, each in
           DIR/seed_<k>/, with a table in DIR/seeds.md)
  hypergrad
           compare the architecture-gradient estimators on the search state (or the
           latest checkpoint in DIR/checkpoints): prints a table, writes
           DIR/hypergrad.json, DIR/fd_sweep.csv and DIR/fd_sweep.png (--workdir optional)
  summary  parameters and multiply-adds of a config's network for one image
           (no --workdir; --json prints one JSON object; train configs take
           --config.genotype=NAME|genotype.json|search workdir)
  train    train a genotype's network from scratch (configs/train_*.py;
           --config.genotype=NAME|random:SEED|genotype.json|search workdir); writes
           DIR/metrics.jsonl, DIR/summary.json, DIR/genotype.json, DIR/config.json and
           DIR/checkpoints/ (a rerun in DIR resumes); a num_seeds search workdir
           trains every seed's genotype in turn, into DIR/seed_<k>/
  plot     pictures of a search workdir in DIR/plots/ (no --config): alpha evolution,
           final-alpha heatmaps, the derived cells (DOT, PNG), learning rate, losses,
           hypergradient probe curves

--debug prints the traceback of an unexpected error (it is always written to
DIR/jdarts-error.log, or a temporary file without a workdir).

example:
  jdarts search --config=configs/quickstart.py --workdir=runs/quickstart
"""


class UsageError(Exception):
  pass


def _parse(argv: List[str], require_workdir: bool = True):
  """Parses `--config`/`--workdir` flags with ml_collections config flags."""
  from absl import flags
  from ml_collections import config_flags

  from jdarts import config_lib
  for a in argv:  # the file's own problems in one line, before the flag parser sees it
    if a.startswith("--config="):
      config_lib.check_config_file(a[len("--config="):])
  fv = flags.FlagValues()
  # sys_argv: config_flags finds the --config.key overrides to define in it;
  # by default it reads sys.argv, which is wrong when main() gets its own argv.
  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                  flag_values=fv, lock_config=True,
                                  sys_argv=["jdarts"] + argv)
  flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.",
                      flag_values=fv)
  try:
    fv(["jdarts"] + argv)
  except flags.Error as e:
    raise UsageError(_one_line(e)) from None
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    # ml_collections reports unknown override keys and type mismatches this way.
    # ml_collections wraps a KeyError (whose str() is a repr) in an AttributeError;
    # the innermost message reads better.
    msg = e
    while isinstance(msg, BaseException) and msg.args and (
        isinstance(msg, KeyError) or isinstance(msg.args[0], BaseException)):
      msg = msg.args[0]
    raise UsageError(f"bad --config override: {_one_line(msg)}") from None
  if fv.config is None:
    raise UsageError("--config is required, e.g. --config=configs/quickstart.py.")
  if not fv.workdir and require_workdir:
    raise UsageError("--workdir is required, e.g. --workdir=runs/quickstart.")
  return fv.config, fv.workdir


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever sys.stderr is now (it may be replaced, e.g. by tests)."""

  def __init__(self):
    super().__init__(sys.stderr)

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, _):
    pass


def _one_line(e) -> str:
  msg = str(e).strip().strip('"').replace("\n", " ")
  msg = " ".join(msg.split())  # one line, however the message was wrapped
  return msg[:500] if msg else type(e).__name__


def main(argv: Optional[List[str]] = None) -> int:
  """Entry point of the `jdarts` console script; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"jdarts: unknown command {command!r}; choose one of {', '.join(COMMANDS)}.",
          file=sys.stderr)
    return 2
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
  logger = logging.getLogger("jdarts")
  if not logger.handlers:
    logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False  # absl's root handler would print every line twice
  from jdarts import config_lib
  from jdarts.data import DataError, DatasetNotFoundError
  from jdarts.checkpoint import CheckpointCorruptError, CheckpointMismatchError
  from jdarts.checkpoint import CheckpointWriteError
  debug = "--debug" in rest
  rest = [a for a in rest if a != "--debug"]
  workdir = None
  try:
    if command == "plot":
      return _plot(rest)
    as_json = command == "summary" and "--json" in rest
    if command == "summary":
      rest = [a for a in rest if a != "--json"]
    config, workdir = _parse(rest, require_workdir=command not in ("hypergrad", "summary"))
    if command in ("search", "train"):
      return _run_loop(command, config, workdir)
    elif command == "hypergrad":
      from jdarts import hypergrad_report
      hypergrad_report.run(config, workdir)
    elif command == "summary":
      from jdarts import summary
      print(summary.run(config, as_json=as_json))
  except (UsageError, config_lib.ConfigError, DatasetNotFoundError, DataError,
          CheckpointMismatchError, CheckpointCorruptError) as e:
    print(f"jdarts {command}: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except KeyError as e:  # registry lookups: unknown operation / space / dataset
    print(f"jdarts {command}: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except CheckpointWriteError as e:  # e.g. disk full; the previous checkpoint is intact
    print(f"jdarts {command}: error: {_one_line(e)}", file=sys.stderr)
    return 1
  except Exception as e:  # a bug: one line and where the traceback is, never a wall of text
    path = _write_error_log(command, workdir, argv)
    print(f"jdarts {command}: unexpected error: {type(e).__name__}: {_one_line(e)[:300]}; "
          f"full traceback in {path} (--debug prints it); please report it.",
          file=sys.stderr)
    if debug:
      traceback.print_exc(file=sys.stderr)
    return 3
  return 0


def _write_error_log(command: str, workdir: Optional[str], argv: List[str]) -> str:
  """Writes the current exception's traceback to a log file and returns its path.

  `workdir/jdarts-error.log` (appended) when the workdir is a directory, else a
  new temporary file; '<unwritable>' if neither can be written.
  """
  text = (f"$ jdarts {' '.join(argv)}\n{traceback.format_exc()}\n")
  if workdir and os.path.isdir(workdir):
    path = os.path.join(workdir, "jdarts-error.log")
    try:
      with open(path, "a") as f:
        f.write(text)
      return path
    except OSError:
      pass  # an unwritable workdir: fall through to a temporary file
  try:
    fd, path = tempfile.mkstemp(prefix=f"jdarts-{command}-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return path
  except OSError:
    return "<unwritable>"


def _plot(argv: List[str]) -> int:
  """`jdarts plot --workdir=DIR`: writes DIR/plots/ and lists the files."""
  from jdarts import viz
  dirs = [a[len("--workdir="):] for a in argv if a.startswith("--workdir=")]
  other = [a for a in argv if not a.startswith("--workdir=")]
  if len(dirs) != 1 or not dirs[0] or other:
    raise UsageError("plot takes exactly --workdir=DIR (a search workdir), got "
                     f"{' '.join(argv) or 'nothing'}.")
  written = viz.plot_workdir(dirs[0])
  print(f"wrote {len(written)} files to {os.path.join(dirs[0], 'plots')}: "
        + ", ".join(os.path.basename(w) for w in written))
  return 0


def _run_loop(command: str, config, workdir: str) -> int:
  """Runs `search` or `train` (multi-host aware); returns the exit status."""
  from jdarts import config_lib, lm_train_loop, parallel, runs, search_loop, seeds, train_loop
  try:
    parallel.maybe_initialize_distributed()
  except ValueError as e:  # an incomplete JDARTS_* / SLURM environment
    raise UsageError(str(e)) from None
  # A train config names its trainer ('lm': language models); image networks otherwise.
  trainers = {"image": train_loop, "lm": lm_train_loop}
  trainer = config.get("trainer", "image")
  if command == "train" and trainer not in trainers:
    raise config_lib.ConfigError(f"trainer={trainer!r} is unknown; choose one of "
                                 f"{', '.join(trainers)}.")
  loop = search_loop if command == "search" else trainers[trainer]
  try:
    if command == "train" and seeds.seed_dirs_of(config.get("genotype")):
      # A several-seed search workdir: every seed's genotype, in turn.
      seeds.train_each_seed(loop, config, workdir)
    else:
      loop.run(config, workdir)
  except runs.Preempted as e:
    print(f"jdarts {command}: {e}", file=sys.stderr)
    return 128 + (e.signum or 15)  # the shell's convention for a signalled process
  except runs.NonFiniteLossError as e:
    print(f"jdarts {command}: error: {_one_line(e)}", file=sys.stderr)
    return 1
  return 0


def entry() -> None:
  sys.exit(main())


if __name__ == "__main__":
  entry()
