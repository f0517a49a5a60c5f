"""Times the DARTS CNN search steps: ms per step, images/s, compile s, memory of compile and run.

    python benchmarks/search_step.py --C=8 --layers=5 --batch=16 --isolate \
        --steps=weight,arch_first_order,exact_hvp,finite_difference

Each measured step is one jitted function (state donated, as in the search),
compiled once with the search loops' XLA options
(`jdarts.parallel.default_compiler_options()`; `--xla_default` for XLA's own)
and timed apart (wall and process CPU seconds), warmed up, then run
`--repeats` times on random 32x32x3 inputs:

* weight             grad of the train loss w.r.t. weights + the real update
                     (clip, coupled decay, momentum SGD): the reference's `weight`
* arch_first_order   grad of the val loss w.r.t. alphas + Adam: `arch_first`
* fused_first_order  jdarts's full first-order search step (alpha then weight update)
* unrolled / exact_hvp / finite_difference / implicit_cg
                     the architecture gradient by that estimator + Adam; the
                     virtual step w' is the search's (`optim.virtual_step` of
                     `arch.virtual_step`, default 'reference': momentum and coupled
                     decay, no clip, as quark0/darts), so finite_difference is the
                     reference's `arch_second`
* search_first_order / search_finite_difference / search_exact_hvp
                     the whole search step (alphas, then weights) that `jdarts
                     search` runs with that estimator and `--step_kind`
                     (default 'auto', the search's choice; 'staged_bilevel' runs
                     as several programs), through `parallel.ParallelStep`:
                     the reference's kinds `arch_*` + `weight`; compile time is
                     the first call less one step

Memory is measured apart for compiling and for running: the process's peak
RSS (VmHWM, reset through /proc/self/clear_refs before each phase, Linux) after
compiling and after the runs, XLA's own account of the program (temp +
arguments + outputs), and on GPU/TPU the device's `peak_bytes_in_use`. Between
the two the compiler's freed memory is handed back to the operating system
(`jdarts.host_memory.release`, as the run loops do after their first step;
`--keep_freed` skips it), so the run's peak counts what the running holds.
Before compiling, the programs that building the state compiled op by op are
dropped (`jdarts.host_memory.drop_compiled`, as the run loops do before their
first step; `--keep_freed` keeps them too). With
`--isolate` every kind runs in its own fresh process, so a kind's peaks do not
include the programs compiled before it (the reference's benchmark does the same).

Prints one JSON object per step kind (and appends it to --out if given), with
the field names of `../shared/peers/bench_torch_darts.py` (`kind`,
`ms_per_step`: median, `ms_min`, `images_per_s`, `peak_rss_mb`, `cpu_util`) so
the two tabulate together (`benchmarks/side_by_side.py`); `ref_kind` names the
reference's matching kind.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
from jdarts import (config_lib, data, host_memory, hypergrad, optim, parallel,  # noqa: E402
                    schedules, search, spaces)

# Our kind -> the kind of bench_torch_darts.py it is timed against.
REF_KIND = {"weight": "weight", "arch_first_order": "arch_first",
            "finite_difference": "arch_second", "exact_hvp": "arch_second",
            "unrolled": "arch_second", "search_first_order": "arch_first+weight",
            "search_finite_difference": "arch_second+weight",
            "search_exact_hvp": "arch_second+weight"}
# Whole search steps, as a search runs them (`measure_search_step`): kind -> arch.method.
SEARCH_KINDS = {"search_first_order": "first_order",
                "search_finite_difference": "finite_difference",
                "search_exact_hvp": "exact_hvp"}


def reset_peak_rss() -> bool:
  """Resets the process's peak RSS (Linux >= 4.0); False where that is impossible."""
  try:
    with open("/proc/self/clear_refs", "w") as fh:
      fh.write("5")
    return True
  except OSError:
    return False


def peak_rss_mb() -> float:
  """Peak RSS since the last `reset_peak_rss` (or since the start), MB."""
  hwm = host_memory.status_mb("VmHWM")
  return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_memory_mb():
  """(bytes_in_use, peak_bytes_in_use) of the first device in MB, or (None, None) (CPU)."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - not every backend implements it
    stats = {}
  mb = lambda k: None if k not in stats else stats[k] / 2**20
  return mb("bytes_in_use"), mb("peak_bytes_in_use")


def peak_memory_mb() -> float:
  """Peak device memory if the backend reports it, else peak host RSS (MB)."""
  peak = device_memory_mb()[1]
  return peak if peak is not None else peak_rss_mb()


def add_supernet_args(ap):
  """The supernet-setting flags the search benchmarks share."""
  ap.add_argument("--C", type=int, default=8)
  ap.add_argument("--layers", type=int, default=5)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--depthwise", default="auto")
  ap.add_argument("--primitives", default="", help="comma-separated subset (profiling)")


def build(C, layers, batch, depthwise, primitives, batch_edges=False, image=32,
          alpha_scale=0.0, dtype="float32", remat=False):
  """Space, config, optimisers, schedule, a search state and two random batches.

  Batches are {'image': (batch, image, image, 3), 'label': (batch,)}; with
  alpha_scale > 0 the alphas are random normals of that scale (zero otherwise).
  """
  model = dict(init_channels=C, layers=layers, depthwise=depthwise,
               batch_edges=batch_edges, dtype=dtype, remat=remat)
  if primitives:
    model["primitives"] = tuple(primitives.split(","))
  info = data.DatasetInfo("synthetic", (image, image, 3), 10, (0.5,) * 3, (0.25,) * 3)
  space = spaces.get_space("darts_cnn", model, info)
  cfg = config_lib.search_defaults()
  rng = np.random.RandomState(0)
  mk = lambda: {"image": jnp.asarray(rng.randn(batch, image, image, 3), jnp.float32),
                "label": jnp.asarray(rng.randint(0, 10, batch), jnp.int32)}
  tb, vb = mk(), mk()
  sched = schedules.make_schedule(cfg.optim, 50, 100)
  w_opt = optim.weight_optimizer(cfg.optim, sched)
  a_opt = optim.arch_optimizer(cfg.arch)
  state = search.init_state(space, jax.random.PRNGKey(0), tb, w_opt, a_opt)
  if alpha_scale:
    state = state.replace(alphas=jax.tree_util.tree_map(
        lambda a: alpha_scale * jnp.asarray(rng.randn(*a.shape), a.dtype), state.alphas))
  return space, cfg, w_opt, a_opt, sched, state, tb, vb


def estimator_kwargs(cfg, sched, w_opt_state, step, **overrides) -> dict:
  """`hypergrad.arch_grad`'s settings (xi, optimizer, opt_state, estimator options) at `step`.

  The virtual step is `optim.virtual_step(cfg.arch.virtual_step, ...)` and the
  estimator options `hypergrad.estimator_options`, exactly what
  `search.make_search_step` hands `hypergrad.arch_grad`; xi follows `arch.xi`
  (negative: the weights' learning rate at `step`); `overrides` replace
  estimator options (e.g. cg_iters).
  """
  virtual = optim.virtual_step(cfg.arch.get("virtual_step", "reference"), cfg.optim, sched)
  return dict(hypergrad.estimator_options(cfg.arch, cfg.optim.weight_decay),
              xi=jnp.where(cfg.arch.xi < 0, sched(step), cfg.arch.xi),
              optimizer=virtual.optimizer, opt_state=virtual.state_of(w_opt_state),
              **overrides)


def arch_grad_fn(method, loss, cfg, sched, **overrides):
  """`(params, alphas, tb, vb, w_opt_state, step) -> alpha gradient` as the search forms it
  (settings: `estimator_kwargs`)."""

  def grad(params, alphas, tb, vb, w_opt_state, step):
    return hypergrad.arch_grad(method, loss, loss, params, alphas, tb, vb,
                               **estimator_kwargs(cfg, sched, w_opt_state, step, **overrides))
  return grad


def step_fns(space, cfg, w_opt, a_opt, sched):
  """{kind: (state, train_batch, val_batch) -> state} for every kind of the docstring."""
  loss = lambda p, a, b: space.loss(p, a, b, None, None)[0]

  def weight(state, tb, vb):
    g = jax.grad(loss)(state.params, state.alphas, tb)
    u, os_ = w_opt.update(g, state.w_opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, u), w_opt_state=os_)

  def arch(method):
    grad = arch_grad_fn(method, loss, cfg, sched)

    def f(state, tb, vb):
      g = grad(state.params, state.alphas, tb, vb, state.w_opt_state, state.step)
      u, os_ = a_opt.update(g, state.a_opt_state, state.alphas)
      return state.replace(alphas=optax.apply_updates(state.alphas, u), a_opt_state=os_)
    return f

  fused = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched,
                                  optim_cfg=cfg.optim)
  fns = {"weight": weight, "arch_first_order": arch("first_order"),
         "fused_first_order": lambda s, t, v: fused(s, t, v)[0]}
  for m in ("unrolled", "exact_hvp", "finite_difference", "implicit_cg"):
    fns[m] = arch(m)
  return fns


def _say(label: str, msg: str) -> None:
  """A progress line on stderr, at once: a child killed by a timeout still says how far
  it got (lowered, compiled, ran), which is the figure a short GPU lease needs."""
  if label:
    print(f"[search_step] {label}: {msg}", file=sys.stderr, flush=True)


def _timed_steps(step, state, warmup: int, repeats: int, label: str = ""):
  """Calls `state = step(state)` `warmup` times, then times `repeats` calls:
  (wall seconds per call, process CPU seconds of all timed calls)."""
  for _ in range(warmup):
    state = step(state)
  jax.block_until_ready(state)
  times, cpu = [], 0.0
  for _ in range(repeats):
    w0, p0 = time.perf_counter(), time.process_time()
    state = step(state)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - w0)
    cpu += time.process_time() - p0
  _say(label, f"{repeats} steps, min {1e3 * min(times):.1f} ms")
  return times, cpu


class _Phases:
  """Host memory around compiling and running, as both measurements report it."""

  def __init__(self, release: bool):
    self.release = release
    if release:
      host_memory.drop_compiled()
    self.rss0, self.resettable = host_memory.resident_mb(), reset_peak_rss()

  def compiled(self) -> None:
    """After compiling: the peak so far, then the compiler's freed memory handed back."""
    self.compile_peak, self.rss_compiled = peak_rss_mb(), host_memory.resident_mb()
    self.released = self.release and host_memory.release()
    self.rss1 = host_memory.resident_mb()
    reset_peak_rss()

  def fields(self, times, cpu) -> dict:
    """The fields of a row every step kind has, after the timed runs."""
    run_peak, r = peak_rss_mb(), _round
    return {"ms_per_step": r(1e3 * statistics.median(times)), "ms_min": r(1e3 * min(times)),
            "step_ms": [r(1e3 * t) for t in times], "cpu_util": r(cpu / sum(times), 2),
            "rss_before_compile_mb": r(self.rss0),
            "compile_peak_rss_mb": r(self.compile_peak),
            "rss_after_compile_mb": r(self.rss_compiled), "released": self.released,
            "rss_before_run_mb": r(self.rss1), "run_peak_rss_mb": r(run_peak),
            "run_extra_rss_mb": r(None if self.rss1 is None else run_peak - self.rss1),
            "peak_rss_mb": r(max(self.compile_peak, run_peak)),
            "peak_reset": self.resettable, "device_peak_mb": r(device_memory_mb()[1])}


def _round(x, n=1):
  return None if x is None else round(x, n)


_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
                   "/jax/core/compile/backend_compile_duration": "compile_s"}


@contextlib.contextmanager
def program_seconds():
  """Collects, while open, each program's trace / lower / XLA compile seconds.

  Yields a dict filled on exit: {program name: {'trace_s', 'lower_s',
  'compile_s'}} (JAX's compile events; names as JAX gives them, e.g.
  'jit(val)' for a stage).
  """
  got, out = {}, {}

  def listen(event, secs, fun_name="?", **_):
    if event in _COMPILE_EVENTS:
      name = fun_name if fun_name.startswith(("jit(", "pmap(")) else f"jit({fun_name})"
      row = got.setdefault(name, dict.fromkeys(_COMPILE_EVENTS.values(), 0.0))
      row[_COMPILE_EVENTS[event]] += secs
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield out
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
    out.update({n: {k: round(v, 2) for k, v in r.items()} for n, r in got.items()})


def measure(fn, state, tb, vb, repeats: int, warmup: int = 1, release: bool = True,
            compiler_options=None, label: str = "") -> dict:
  """Compiles `fn` (state donated), warms up, times `repeats` calls; the cost fields of a row.

  `compiler_options` are the XLA options of the program (the search loops'
  `jdarts.parallel.default_compiler_options()` unless given).

  With `release` the programs compiled op by op so far are dropped before
  compiling (`jdarts.host_memory.drop_compiled`, as the run loops do before
  their first step) and the compiler's freed memory is handed back to the
  operating system before running (`jdarts.host_memory.release`), as the run loops do
  after their first step; `rss_after_compile_mb` is the resident memory before
  that, `rss_before_run_mb` after it.
  """
  if compiler_options is None:
    compiler_options = parallel.default_compiler_options()
  jitted = jax.jit(fn, donate_argnums=0, compiler_options=compiler_options or None)
  phases = _Phases(release)
  t0, c0 = time.perf_counter(), time.process_time()
  _say(label, "lowering")
  lowered = jitted.lower(state, tb, vb)
  t1, c1 = time.perf_counter(), time.process_time()
  _say(label, f"lowered in {t1 - t0:.1f} s; compiling")
  compiled = lowered.compile()
  t2, c2 = time.perf_counter(), time.process_time()
  _say(label, f"compiled in {t2 - t1:.1f} s ({c2 - c1:.1f} CPU s); running")
  dev_compile = device_memory_mb()[1]
  program = None
  try:
    mem = compiled.memory_analysis()
    get = lambda k: int(getattr(mem, k, 0) or 0)
    program = (get("temp_size_in_bytes") + get("argument_size_in_bytes")
               + get("output_size_in_bytes") - get("alias_size_in_bytes")) / 2**20
  except Exception:  # noqa: BLE001 - not every backend reports it
    pass
  # Donation consumes the state: run on a copy so the caller's stays valid.
  s = jax.tree_util.tree_map(jnp.copy, state)
  phases.compiled()
  times, cpu = _timed_steps(lambda s: compiled(s, tb, vb), s, warmup, repeats, label)
  return {**phases.fields(times, cpu),
          "lower_s": _round(t1 - t0, 2), "lower_cpu_s": _round(c1 - c0, 2),
          "compile_s": _round(t2 - t1, 2), "compile_cpu_s": _round(c2 - c1, 2),
          "compiler_options": compiler_options, "program_mb": _round(program),
          "device_peak_after_compile_mb": _round(dev_compile)}


def measure_search_step(space, cfg, w_opt, a_opt, sched, state, tb, vb, method: str,
                        step_kind: str, repeats: int, warmup: int = 1, release: bool = True,
                        label: str = "") -> dict:
  """The whole search step as `jdarts search` runs it: the cost fields of a row.

  `search.make_search_step` with `arch.method=method`, `arch.step_kind=step_kind`
  ('auto': the kind a search picks), through `parallel.ParallelStep` on one
  device, state donated: a 'staged_bilevel' step runs as its stages' programs.
  Its programs compile in the first call, so `first_call_s` is compile and one
  step, and `compile_s` that less the median step; `programs` splits the first
  call's trace / lower / compile seconds by program (`program_seconds`), e.g.
  by stage.
  """
  cfg = cfg.copy_and_resolve_references()
  cfg.arch.method, cfg.arch.step_kind = method, step_kind
  step = search.make_search_step(space, cfg.arch, w_opt, a_opt, sched, optim_cfg=cfg.optim,
                                 weight_decay=cfg.optim.weight_decay)
  ps, kind = parallel.ParallelStep(step, backend="none"), search.step_kind_for(cfg.arch)
  phases = _Phases(release)
  s = ps.put_state(jax.tree_util.tree_map(jnp.copy, state))
  _say(label, f"first call ({kind}): compiling")
  t0, c0 = time.perf_counter(), time.process_time()
  with program_seconds() as programs:
    s, _ = ps(s, tb, vb)
    jax.block_until_ready(s)
  first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
  phases.compiled()
  times, cpu = _timed_steps(lambda s: ps(s, tb, vb)[0], s, warmup, repeats, label)
  med = statistics.median(times)
  return {**phases.fields(times, cpu), "step_kind": kind,
          "first_call_s": _round(first, 2), "compile_s": _round(first - med, 2),
          "compile_cpu_s": _round(first_cpu - cpu / len(times), 2), "programs": programs}


def run_isolated(args, kinds):
  """Runs every kind in a fresh child process (same flags, one kind each)."""
  flags = [f"--C={args.C}", f"--layers={args.layers}", f"--batch={args.batch}",
           f"--repeats={args.repeats}", f"--depthwise={args.depthwise}",
           f"--primitives={args.primitives}", f"--dtype={args.dtype}",
           f"--warmup={args.warmup}", f"--out={args.out}"]
  flags += ["--batch_edges"] if args.batch_edges else []
  flags += ["--remat"] if args.remat else []
  flags += ["--keep_freed"] if args.keep_freed else []
  flags += ["--xla_default"] if args.xla_default else []
  flags += [f"--step_kind={args.step_kind}"]
  rc = 0
  for kind in kinds:
    p = subprocess.run([sys.executable, os.path.abspath(__file__), *flags, f"--steps={kind}"])
    if p.returncode:
      print(json.dumps({"kind": kind, "error": f"child exited {p.returncode}"}), flush=True)
      rc = 1
  return rc


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_supernet_args(ap)
  ap.add_argument("--batch_edges", action="store_true",
                  help="compute cell edges per source state (model.batch_edges)")
  ap.add_argument("--dtype", default="float32", help="model.dtype (compute dtype)")
  ap.add_argument("--remat", action="store_true",
                  help="recompute each cell in the backward pass (model.remat)")
  ap.add_argument("--steps", default="weight,arch_first_order,fused_first_order")
  ap.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  ap.add_argument("--isolate", action="store_true",
                  help="each kind in its own process (memory per kind)")
  ap.add_argument("--keep_freed", action="store_true",
                  help="run without first handing the compiler's freed memory back "
                       "(jdarts.host_memory.release) or dropping the programs compiled "
                       "op by op (drop_compiled); the run loops do both")
  ap.add_argument("--xla_default", action="store_true",
                  help="compile with XLA's default options instead of the search loops' "
                       "(jdarts.parallel.default_compiler_options: on CPU, optimisation "
                       "barriers kept)")
  ap.add_argument("--step_kind", default="auto",
                  help="arch.step_kind of the search_* kinds (whole search steps)")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  kinds = [k for k in args.steps.split(",") if k]
  known = ("weight", "arch_first_order", "fused_first_order", "unrolled", "exact_hvp",
           "finite_difference", "implicit_cg") + tuple(SEARCH_KINDS)
  bad = [k for k in kinds if k not in known]
  if bad:
    raise SystemExit(f"--steps: unknown step {bad[0]!r}; choose from {', '.join(known)}")
  if args.xla_default and set(kinds) & set(SEARCH_KINDS):
    raise SystemExit("--xla_default: the search_* kinds compile as a search does; time "
                     "them without it")
  if args.isolate and len(kinds) > 1:
    raise SystemExit(run_isolated(args, kinds))

  t0 = time.perf_counter()
  space, cfg, w_opt, a_opt, sched, state, tb, vb = build(
      args.C, args.layers, args.batch, args.depthwise, args.primitives, args.batch_edges,
      dtype=args.dtype, remat=args.remat)
  _say(",".join(kinds), f"supernet built in {time.perf_counter() - t0:.1f} s on "
       f"{jax.devices()[0].device_kind}")
  fns = step_fns(space, cfg, w_opt, a_opt, sched)
  for name in kinds:
    load0 = os.getloadavg()[0]
    if name in SEARCH_KINDS:
      cost = measure_search_step(space, cfg, w_opt, a_opt, sched, state, tb, vb,
                                 SEARCH_KINDS[name], args.step_kind, args.repeats,
                                 args.warmup, release=not args.keep_freed, label=name)
    else:
      cost = measure(fns[name], state, tb, vb, args.repeats, args.warmup,
                     release=not args.keep_freed,
                     compiler_options={} if args.xla_default else None, label=name)
    # One step of the bilevel search consumes a train and a val batch; the
    # weight-only and arch-only steps consume one.
    whole = name == "fused_first_order" or name in SEARCH_KINDS
    images = 2 * args.batch if whole else args.batch
    row = {"peer": "jdarts", "kind": name, "ref_kind": REF_KIND.get(name),
           "init_channels": args.C, "layers": args.layers, "batch_size": args.batch,
           **cost, "images_per_s": round(images * 1e3 / cost["ms_per_step"], 2),
           "depthwise": args.depthwise, "primitives": args.primitives or "all",
           "batch_edges": args.batch_edges, "remat": args.remat, "dtype": args.dtype,
           "virtual_step": cfg.arch.get("virtual_step", "reference"),
           "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
           "jax": jax.__version__, "loadavg_1m": [round(load0, 2),
                                                  round(os.getloadavg()[0], 2)]}
    print(json.dumps(row), flush=True)
    if args.out:
      with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
