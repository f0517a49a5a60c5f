"""A step computed by several programs called in turn: `StagedStep`.

XLA:CPU compiles a program that differentiates the network several times over
(a second-order architecture step) slower per instruction and in far more
memory than the same work cut into programs of one gradient each; so much
more that such programs trace within `depthwise.compile_light()` and give up
the fused depthwise form, the fastest on CPU (benchmarks/RESULTS.md, issue 17).
A `StagedStep` keeps the step one pure function of the search state while
letting `jdarts.parallel.ParallelStep` compile each stage as its own program:

* Every stage is a per-device function `(state, train_batch, val_batch,
  scratch) -> scratch`, the last one `-> (state, metrics)`, written with the
  same collectives over the device axis as a one-program step.
* `scratch` is a dict `{'rep': ..., 'rows': ...}`: 'rep' holds values that are
  the same on every device (device-averaged gradients, metrics), 'rows' values
  split over the devices like a batch (a recurrent space's carries). The
  device wrappers place them so (`jdarts.parallel`).
* `drive(call, state, train_batch, val_batch)` says the order:
  `call(name, state, train_batch, val_batch, scratch)` runs one stage.

Called as a function (or under `jax.jit`), a `StagedStep` runs its stages
inline: one program, traced within `compile_light(light)` as the one-program
step of its estimator would be, with the same numbers as the staged run up
to rounding.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping

from jdarts import depthwise

REP, ROWS = "rep", "rows"


def scratch(rep=None, rows=None) -> Dict[str, dict]:
  """A stage's scratch: `rep` device-replicated values, `rows` batch-split ones."""
  return {REP: dict(rep or {}), ROWS: dict(rows or {})}


class StagedStep:
  """A per-device `(state, train_batch, val_batch) -> (state, metrics)` in stages.

  Args:
    stages: {name: per-device stage function} (see the module docstring).
    drive: `(call, state, train_batch, val_batch) -> (state, metrics)`,
      calling the stages in order through `call(name, state, tb, vb, scratch)`.
    final: the name of the stage that returns `(state, metrics)`; wrappers
      donate the state to it, and only to it.
    light: trace the inline (one-program) form within
      `depthwise.compile_light()`.
  """

  def __init__(self, stages: Mapping[str, Callable], drive: Callable, final: str,
               light: bool = False):
    if final not in stages:
      raise ValueError(f"final stage {final!r} is not one of the stages {sorted(stages)}.")
    self.stages, self.drive, self.final, self.light = dict(stages), drive, final, light

  def __call__(self, state, train_batch, val_batch):
    with depthwise.compile_light(self.light):
      return self.drive(lambda name, *args: self.stages[name](*args), state, train_batch,
                        val_batch)

  def map(self, transform: Callable[[str, Callable], Callable]) -> "StagedStep":
    """The step with every stage `f` replaced by `transform(name, f)` (vmap, pmap, jit...)."""
    return StagedStep({n: transform(n, f) for n, f in self.stages.items()}, self.drive,
                      self.final, self.light)

  def run(self, call: Callable, state, train_batch, val_batch):
    """Runs the stages through `call(name, state, tb, vb, scratch)` (compiled ones)."""
    return self.drive(call, state, train_batch, val_batch)


def with_metric_stage(step: StagedStep, name: str, fn: Callable) -> StagedStep:
  """`step` with a first stage of its own computing metric `name`.

  Args:
    step: a staged step.
    name: the metric's (and the stage's) name.
    fn: per-device `(state, train_batch, val_batch) -> scalar`, the same on
      every device (averaged over the device axis), of the state before the step.
  """
  if name in step.stages:
    raise ValueError(f"metric stage {name!r} would replace the step's stage of that name; "
                     f"pick a name not among {sorted(step.stages)}.")

  def first(state, train_batch, val_batch, _):
    return scratch({name: fn(state, train_batch, val_batch)})

  def drive(call, state, train_batch, val_batch):
    value = call(name, state, train_batch, val_batch, scratch())[REP][name]
    new, metrics = step.drive(call, state, train_batch, val_batch)
    return new, {**metrics, name: value}
  return StagedStep(dict(step.stages, **{name: first}), drive, step.final, step.light)
