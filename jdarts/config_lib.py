"""Config defaults and validation shared by every search config.

Configs are code: `configs/<experiment>.py` defines `get_config()` starting
from `search_defaults()` and changing what its paper section says. Each block
is checked by the module that owns it (`jdarts.experiment.validate` calls them
all) and a bad value raises `ConfigError` with one line that names the key and
the fix. This module imports nothing of jdarts: everything may raise its error.
"""
from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def check_config_file(spec: str) -> None:
  """Raises ConfigError in one line unless `spec` ('path[:arg]') loads a config.

  Checks, in order, what a new user gets wrong with a config file: the path
  does not exist, is a directory or cannot be read; the file has a syntax
  error; it defines no `get_config`; `get_config(arg)` raises or returns
  something that is not a ConfigDict. The file is executed once here, so a
  config must be side-effect free (it is code, executed again by the flag
  parser).

  Args:
    spec: the value of `--config`, e.g. 'configs/quickstart.py:debug'.
  """
  path, _, arg = spec.partition(":")
  hint = "give a configs/*.py file defining get_config(), e.g. --config=configs/quickstart.py"
  if not os.path.exists(path):
    raise ConfigError(f"--config={path}: no such file; {hint}.")
  if os.path.isdir(path):
    raise ConfigError(f"--config={path} is a directory; {hint}.")
  try:
    with open(path, "rb") as f:
      source = f.read()
  except OSError as e:
    raise ConfigError(f"--config={path} cannot be read ({e.strerror or e}); check its "
                      "permissions.") from None
  try:
    tree = ast.parse(source, filename=path)
  except (SyntaxError, ValueError) as e:
    where = f"{path}:{getattr(e, 'lineno', '?')}"
    raise ConfigError(f"--config={path}: syntax error at {where}: "
                      f"{getattr(e, 'msg', e)}; fix the file.") from None
  if not any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body):
    raise ConfigError(f"--config={path} defines no get_config(); a config file is "
                      "'def get_config(): return ml_collections.ConfigDict(...)'.")
  mod_spec = importlib.util.spec_from_file_location("jdarts_config_check", path)
  module = importlib.util.module_from_spec(mod_spec)
  try:
    mod_spec.loader.exec_module(module)
    cfg = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # the user's code: any error is theirs to fix
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
    call = f"get_config({arg!r})" if arg else "get_config()"
    raise ConfigError(f"--config={spec}: {call} raised {type(e).__name__}"
                      f"{': ' + msg[:300] if msg else ''}.") from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"--config={spec}: get_config() returned {type(cfg).__name__}; it "
                      "must return an ml_collections.ConfigDict.")


def search_defaults() -> ml_collections.ConfigDict:
  """DARTS CNN search on CIFAR-10 with the paper's settings (paper A.1.1).

  Values taken from the reference code (quark0/darts cnn/train_search.py)
  where the paper is silent are marked so.
  """
  c = ml_collections.ConfigDict()
  c.seed = 2                      # reference default --seed
  # K > 1: K independent searches in one program (jdarts.seeds_loop); search k
  # is exactly the single run with seed = seed + k.
  c.num_seeds = 1
  c.space = "darts_cnn"
  c.model = ml_collections.ConfigDict(dict(
      init_channels=16,           # A.1.1: "initial number of channels 16"
      layers=8,                   # A.1.1: "a small network of 8 cells"
      steps=4, multiplier=4, stem_multiplier=3,  # sec. 2.1 / reference
      primitives=("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                  "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
                  "dil_conv_5x5"),  # sec. 2.1 (the reference's PRIMITIVES)
      mixing="softmax",           # eq. 2
      alpha_init_scale=0.0,       # A.1.1: "zero initialization"; reference uses 1e-3
      depthwise="auto",           # see jdarts.ops
      batch_edges=False,          # edges per source state (darts_cnn.BatchedSearchCell)
      remat=False, dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(
      name="cifar10", data_dir="",
      train_portion=0.5,          # A.1.1: "hold out half of the training data"
      augment=True, cutout=0,     # reference search: crop + flip, no cutout
      test_split="test",
      # Shuffle/augmentation order: -1 follows `seed`; >= 0 fixes it, so the
      # searches of a num_seeds > 1 run share one input pipeline.
      seed=-1))
  c.batch_size = 64               # A.1.1: "batch size 64 (for both ...)"
  c.epochs = 50                   # A.1.1: "for 50 epochs"
  c.max_steps = 0                 # 0: no limit; >0 stops early with the same outputs
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=0.025,        # A.1.1: eta_w = 0.025
      learning_rate_min=0.001,    # reference --learning_rate_min; the paper anneals to 0
      schedule="cosine_by_epoch", # A.1.1: cosine without restart (reference: per epoch)
      power=2.0,                  # only for cosine_power*: sharp_darts.txt Table 2, p=2
      momentum=0.9, weight_decay=3e-4,  # A.1.1
      grad_clip=5.0))             # reference --grad_clip
  c.arch = ml_collections.ConfigDict(dict(
      method="first_order",       # DARTS (1st order); 'unrolled'/'exact_hvp' for 2nd
      learning_rate=3e-4,         # A.1.1: eta_alpha = 3e-4
      b1=0.5, b2=0.999,           # A.1.1: beta = (0.5, 0.999)
      weight_decay=1e-3,          # A.1.1
      xi=-1.0,                    # <0: the weights' current learning rate (footnote 1)
      # eq. 6 as quark0/darts architect.py: w - lr (momentum buf + g + wd w), g
      # unclipped; 'clip_constant': clipped, coefficient held constant (rnn/);
      # 'real_update': clip differentiated (not eq. 7); 'sgd': w - xi g
      virtual_step="reference",
      fd_eps=0.01,                # eq. 8: eps = 0.01 / ||grad||
      neumann_terms=20, neumann_lr=0.0,  # 0: use xi
      # jdarts.solvers.CG_DAMPING: ~3x the weight decay, caps 1/lambda blow-up on
      # near-flat directions; the implicit Hessian also gets optim.weight_decay.
      cg_iters=20, cg_damping=1e-3,
      unroll_solver=False,        # True: Python-unrolled Neumann/CG; faster runs on
                                  # CPU, far longer compiles (benchmarks/RESULTS.md)
      step_kind="auto",           # 'auto': from the method (second order on CPU:
                                  # 'staged_bilevel', several programs); or a
                                  # search.STEP_KINDS name
      fuse_first_order=False))    # True: one lax.scan; 10x slower on CPU (search.py)
  c.parallel = ml_collections.ConfigDict(dict(
      backend="pmap",             # 'pmap' | 'shard_map' | 'none' (see jdarts.parallel)
      num_devices=0,              # 0: every local device; the global batch is split
      cross_replica_bn=True))     # BN moments over the global batch (False: ghost BN)
  c.checkpoint = ml_collections.ConfigDict(dict(
      enabled=True,               # workdir/checkpoints; a rerun in the workdir resumes
      every_steps=0,              # 0: at the end of every epoch
      keep=3,                     # the last K checkpoints are kept
      async_save=False))
  c.log_every = 10
  c.progress = True
  c.tensorboard = True  # workdir/tb: the metrics rows as TensorBoard events too
  c.report = True       # workdir/report.md and workdir/plots/ at the end (~2 s)
  c.compilation_cache_dir = "~/.cache/jdarts/xla"
  # Before compiling the first step, drop the ~200 small programs (~300 MB) that
  # the eager initialisation compiled (jdarts.host_memory.drop_compiled). False
  # keeps them, and every other compiled program in this process, when a run is
  # one call among others in a longer-lived Python process.
  c.drop_init_programs = True
  c.hypergrad = hypergrad_defaults()  # `jdarts hypergrad` (jdarts.hypergrad_report)
  # >0: every N steps compare hypergrad.methods against hypergrad.reference on
  # the step's own state and batches (workdir/hypergrad_probe.jsonl); costs one
  # call of every method per probe, plus compiling each once.
  c.hypergrad_probe_every = 0
  # Collapse diagnostics (jdarts.collapse; RobustDARTS, Zela et al. 2020): every N
  # epochs the dominant eigenvalue of the alpha Hessian of the validation loss
  # (one fixed search-val batch), power iteration on exact HVPs; 'spectrum' also
  # computes the explicit Hessian's extreme eigenvalues; 'early_stop' is DARTS-ES
  # (stop when the window-mean rises by 1/threshold; keep the genotype `window`
  # measurements earlier).
  c.collapse = ml_collections.ConfigDict(dict(
      every_epochs=0, power_iters=20, tol=1e-4, spectrum=False,
      early_stop=False, window=5, threshold=0.75))
  return c


def hypergrad_defaults() -> ml_collections.ConfigDict:
  """Settings of `jdarts hypergrad` (estimator comparison and eps sweep).

  The estimators' own settings (xi, virtual_step, fd_eps, Neumann/CG) are the
  config's `arch` block, so the comparison runs what the search would run.
  """
  return ml_collections.ConfigDict(dict(
      methods=("first_order", "unrolled", "exact_hvp", "finite_difference",
               "single_level", "implicit_neumann", "implicit_cg"),  # hypergrad.METHODS
      reference="unrolled",       # compared against; autodiff through the virtual step
      repeats=5,                  # timed calls per method (median reported)
      fd_sweep=True,              # error of eq. 8 over eps
      fd_reference="exact_hvp",   # 'exact_hvp' | 'unrolled'
      fd_eps_max=1.0, fd_eps_min=1e-10, fd_eps_num=21,  # log grid, 2 per decade
      float64=False))             # run the sweep in float64 (model.dtype too)
