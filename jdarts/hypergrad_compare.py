"""Fidelity and cost of the hypergradient estimators, side by side.

For researchers studying the bilevel optimisation itself (DESIGN.md, user 2):
every estimator of `jdarts.hypergrad` is evaluated on the *same* batches at the
*same* state, and compared with a reference estimator (by default `unrolled`,
autodiff through the real virtual step)::

  rows = hypergrad_compare.compare(train_loss, val_loss, params, alphas,
                                   train_batch, val_batch,
                                   methods=("first_order", "exact_hvp",
                                            "finite_difference"), xi=0.025)

Each row holds the cosine similarity and relative error against the reference,
the median wall time per call after compilation, the compile time, and the
compiled program's memory (XLA's `memory_analysis()`: temporaries + arguments
+ outputs, available on CPU too) and flop count (`cost_analysis()`).

`fd_eps_sweep` measures the error of the finite-difference estimator (eq. 8)
against the exact one over a log grid of step sizes, showing the eps^2
truncation regime and the round-off floor; `summarize_sweep` fits the slope.

All functions are pure in the sense that they only read their arguments (they
do compile and run JAX programs); the `jdarts hypergrad` command that builds a
search state and writes the results lives in `jdarts.hypergrad_report`.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdarts import hypergrad
from jdarts import parallel

PyTree = Any
Row = Dict[str, Any]

DEFAULT_EPS = tuple(float(e) for e in np.logspace(0, -10, 21))  # 1e0 ... 1e-10


# ---------------------------------------------------------------------------
# Small numeric helpers.


def flatten(tree: PyTree) -> np.ndarray:
  """All leaves of `tree` as one float64 vector of shape (total size,)."""
  leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
  return np.concatenate(leaves) if leaves else np.zeros((0,))


def _check_same_structure(g: PyTree, ref: PyTree) -> None:
  if jax.tree.structure(g) != jax.tree.structure(ref):
    raise ValueError(f"cannot compare gradients of different structure: "
                     f"{jax.tree.structure(g)} vs {jax.tree.structure(ref)}.")
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
    if np.shape(a) != np.shape(b):
      raise ValueError(f"cannot compare gradients with leaf shapes {np.shape(a)} "
                       f"and {np.shape(b)}.")


def cosine_similarity(g: PyTree, ref: PyTree) -> float:
  """<g, ref> / (||g|| ||ref||) over all leaves; NaN if either is zero.

  Args:
    g, ref: pytrees of the same structure and leaf shapes (e.g. shaped like
      `alphas`).

  Returns:
    A Python float in [-1, 1], or NaN.
  """
  _check_same_structure(g, ref)
  a, b = flatten(g), flatten(ref)
  den = np.linalg.norm(a) * np.linalg.norm(b)
  return float(a @ b / den) if den > 0 else float("nan")


def relative_error(g: PyTree, ref: PyTree) -> float:
  """||g - ref||_2 / ||ref||_2 over all leaves (inf if ref is zero and g is not).

  Args:
    g, ref: pytrees of the same structure and leaf shapes.

  Returns:
    A Python float >= 0.
  """
  _check_same_structure(g, ref)
  a, b = flatten(g), flatten(ref)
  num, den = np.linalg.norm(a - b), np.linalg.norm(b)
  if den == 0:
    return 0.0 if num == 0 else float("inf")
  return float(num / den)


def compiled_stats(compiled) -> Dict[str, Optional[float]]:
  """Memory and flops XLA reports for a compiled program.

  Args:
    compiled: the result of `jax.jit(f).lower(...).compile()`.

  Returns:
    {'peak_bytes': temp + argument + output - aliased bytes (the program's
    footprint while it runs), 'temp_bytes', 'argument_bytes', 'output_bytes',
    'flops'}; a value is None where the backend does not report it.
  """
  out: Dict[str, Optional[float]] = dict(peak_bytes=None, temp_bytes=None,
                                         argument_bytes=None, output_bytes=None,
                                         flops=None)
  try:
    mem = compiled.memory_analysis()
  except Exception:  # not implemented on every backend
    mem = None
  if mem is not None:
    get = lambda k: int(getattr(mem, k, 0) or 0)
    out.update(temp_bytes=get("temp_size_in_bytes"),
               argument_bytes=get("argument_size_in_bytes"),
               output_bytes=get("output_size_in_bytes"))
    out["peak_bytes"] = (out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"]
                         - get("alias_size_in_bytes"))
  try:
    cost = compiled.cost_analysis()
  except Exception:
    cost = None
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else None
  if cost and "flops" in cost:
    out["flops"] = float(cost["flops"])
  return out


def device_peak_bytes(device=None) -> Optional[int]:
  """`memory_stats()['peak_bytes_in_use']` of `device` (default: the first).

  The running peak of the whole process (GPU/TPU); None where the backend does
  not report it (CPU).
  """
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:
    stats = {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else int(peak)


def time_calls(fn: Callable, args: Sequence[Any], repeats: int) -> List[float]:
  """Seconds of `repeats` calls of an already compiled `fn(*args)`, after a warm-up.

  Every call is waited for with `jax.block_until_ready`.
  """
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


# ---------------------------------------------------------------------------
# Validation.


def _check_methods(methods, reference) -> tuple:
  if isinstance(methods, str):
    methods = tuple(m.strip() for m in methods.split(",") if m.strip())
  methods = tuple(methods)
  if not methods:
    raise ValueError("methods is empty; choose some of " + ", ".join(hypergrad.METHODS) + ".")
  for m in methods + (() if reference is None else (reference,)):
    if not isinstance(m, str) or m not in hypergrad.METHODS:
      raise ValueError(f"Unknown hypergradient method {m!r}; known methods: "
                       f"{', '.join(hypergrad.METHODS)}.")
  if len(set(methods)) != len(methods):
    raise ValueError(f"methods lists a method twice: {', '.join(methods)}.")
  return methods


def estimator_fn(method, train_loss, val_loss, w_opt, has_aux, kw) -> Callable:
  """`(params, alphas, train_batch, val_batch, w_opt_state, xi) -> g_alpha`."""

  def f(params, alphas, train_batch, val_batch, w_opt_state, xi):
    g = hypergrad.arch_grad(method, train_loss, val_loss, params, alphas, train_batch,
                            val_batch, xi=xi, optimizer=w_opt, opt_state=w_opt_state,
                            has_aux=has_aux, **kw)
    return g[0] if has_aux else g

  return f


def compile_estimator(method, fn, args):
  """(`parallel.jit(fn)` compiled ahead of time for `args`, compile seconds)."""
  try:
    t0 = time.perf_counter()
    compiled = parallel.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0
  except Exception as e:
    e.add_note(f"(while tracing/compiling hypergradient method {method!r})")
    raise


# ---------------------------------------------------------------------------
# Public API.


def compare(train_loss: Callable, val_loss: Callable, params: PyTree, alphas: PyTree,
            train_batch: Any, val_batch: Any, *,
            methods: Sequence[str] = hypergrad.METHODS, xi=None, w_opt=None,
            w_opt_state: PyTree = None, reference: Optional[str] = "unrolled",
            repeats: int = 5, has_aux: bool = False, **kw) -> List[Row]:
  """Every estimator on the same batches and state: fidelity and cost.

  Args:
    train_loss, val_loss: `(params, alphas, batch) -> scalar` (`(scalar, aux)`
      with `has_aux`), as for `hypergrad.arch_grad`.
    params: pytree of float arrays, the weights w.
    alphas: pytree of float arrays, e.g. {'normal': (14, 8), 'reduce': (14, 8)}.
    train_batch, val_batch: pytrees the losses accept, e.g.
      {'image': (B, H, W, C) float32, 'label': (B,) int32}.
    methods: names from `hypergrad.METHODS` (or one comma-separated string).
    xi: virtual-step learning rate (float or scalar array); see `arch_grad`.
    w_opt: optional optax weight optimiser; with it the virtual step is the
      real optax update (`unrolled` differentiates it; `exact_hvp` and
      `finite_difference` use `xi` for the second-order term, so choose `xi`
      equal to the optimiser's current learning rate to compare like with
      like).
    w_opt_state: `w_opt`'s state for `params`; required with `w_opt`.
    reference: the method the others are compared with (default `unrolled`);
      computed once even if it is not in `methods`; None: no comparison.
    repeats: timed calls per method (after compilation and one warm-up call).
    has_aux: whether the losses return `(scalar, aux)`.
    **kw: passed to `arch_grad` (fd_eps, neumann_terms, neumann_lr, cg_iters,
      cg_damping, unroll_solver; axis_name is not supported here).

  Returns:
    One dict per method, in the order of `methods`, with keys
    `method`; `cos_sim`, `rel_err` (vs `reference`; NaN when reference is
    None); `grad_norm` (||g||_2); `ms_per_call` (median), `min_ms`;
    `compile_s` (lowering + XLA compilation); `peak_bytes`, `temp_bytes`,
    `argument_bytes`, `output_bytes`, `flops` (see `compiled_stats`);
    `device_peak_bytes` (process-wide running peak after this method ran, or
    None on CPU); `backend`.

  Raises:
    ValueError: unknown or repeated method, repeats < 1, w_opt without
      w_opt_state, and every error `arch_grad` raises (non-scalar loss,
      opt_state not fitting params, non-float leaves, ...), the latter with a
      note naming the method.
  """
  methods = _check_methods(methods, reference)
  if not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be an int >= 1, got {repeats!r}.")
  if (w_opt is None) != (w_opt_state is None):
    raise ValueError("pass w_opt and w_opt_state together "
                     "(w_opt_state=w_opt.init(params)), or neither.")
  if "axis_name" in kw:
    raise ValueError("compare() runs on one device; axis_name is not supported.")
  args = (params, alphas, train_batch, val_batch, w_opt_state, xi)

  ref_grad = None
  if reference is not None and reference not in methods:
    fn = estimator_fn(reference, train_loss, val_loss, w_opt, has_aux, kw)
    compiled, _ = compile_estimator(reference, fn, args)
    ref_grad = jax.device_get(compiled(*args))

  rows, grads = [], {}
  for m in methods:
    fn = estimator_fn(m, train_loss, val_loss, w_opt, has_aux, kw)
    compiled, compile_s = compile_estimator(m, fn, args)
    times = time_calls(compiled, args, repeats)
    grads[m] = jax.device_get(compiled(*args))
    row = {"method": m, "cos_sim": float("nan"), "rel_err": float("nan"),
           "grad_norm": float(np.linalg.norm(flatten(grads[m]))),
           "ms_per_call": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
           "compile_s": compile_s}
    row.update(compiled_stats(compiled))
    row["device_peak_bytes"] = device_peak_bytes()
    row["backend"] = jax.default_backend()
    rows.append(row)
  if reference is not None:
    ref_grad = grads[reference] if ref_grad is None else ref_grad
    for row in rows:
      row["cos_sim"] = cosine_similarity(grads[row["method"]], ref_grad)
      row["rel_err"] = relative_error(grads[row["method"]], ref_grad)
  return rows


def to_float64(tree: PyTree) -> PyTree:
  """Floating leaves of `tree` as float64 (integer and key leaves unchanged).

  Needs `jax_enable_x64`; without it JAX keeps float32.
  """

  def one(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.asarray(x, jnp.float64)
    return x

  return jax.tree.map(one, tree)


def fd_eps_sweep(train_loss: Callable, val_loss: Callable, params: PyTree, alphas: PyTree,
                 train_batch: Any, val_batch: Any, *, xi, eps: Sequence[float] = DEFAULT_EPS,
                 reference: str = "exact_hvp", w_opt=None, w_opt_state: PyTree = None,
                 float64: bool = True, has_aux: bool = False, **kw) -> List[Row]:
  """Error of `finite_difference` against an exact estimator over step sizes.

  eq. 8 perturbs the weights by +-eps v / ||v|| (`fd_eps` = eps, the length of
  the step in weight space). For smooth losses its error is O(eps^2) until
  round-off, which grows like machine-epsilon / eps, takes over; on networks
  with ReLU / max-pool kinks, large eps also crosses kinks.

  The finite-difference program is compiled once with eps as a traced
  argument, so the sweep costs one compilation (plus the reference's).

  Args:
    train_loss, val_loss, params, alphas, train_batch, val_batch, xi, w_opt,
      w_opt_state, has_aux: as for `compare`.
    eps: the step sizes, e.g. `DEFAULT_EPS` (1e0 down to 1e-10, 2 per decade).
    reference: `exact_hvp` (default) or `unrolled`.
    float64: when `jax_enable_x64` is on, cast every floating leaf of the
      inputs to float64 first (the losses must then compute in their inputs'
      dtype, e.g. darts_cnn with model.dtype='float64').
    **kw: other `arch_grad` options (e.g. neumann settings are ignored).

  Returns:
    One dict per eps, in the given order: `eps`, `abs_err` (||g_fd - g_ref||),
    `rel_err`, `cos_sim`, `dtype` (of the gradient), `reference`.

  Raises:
    ValueError: reference not exact, empty eps or eps <= 0, and the errors of
      `arch_grad`.
  """
  if reference not in ("exact_hvp", "unrolled"):
    raise ValueError(f"reference must be 'exact_hvp' or 'unrolled', got {reference!r}.")
  eps = [float(e) for e in eps]
  if not eps or min(eps) <= 0:
    raise ValueError(f"eps must be a non-empty list of positive step sizes, got {eps}.")
  if (w_opt is None) != (w_opt_state is None):
    raise ValueError("pass w_opt and w_opt_state together, or neither.")
  kw.pop("fd_eps", None)
  if float64 and jax.config.jax_enable_x64:
    params, alphas, train_batch, val_batch, w_opt_state, xi = to_float64(
        (params, alphas, train_batch, val_batch, w_opt_state, jnp.asarray(xi)))
  args = (params, alphas, train_batch, val_batch, w_opt_state, xi)
  ref_fn = estimator_fn(reference, train_loss, val_loss, w_opt, has_aux, kw)
  ref_compiled, _ = compile_estimator(reference, ref_fn, args)
  ref = jax.device_get(ref_compiled(*args))
  dtype = str(jax.tree.leaves(ref)[0].dtype)

  def fd(params, alphas, train_batch, val_batch, w_opt_state, xi, fd_eps):
    g = hypergrad.arch_grad("finite_difference", train_loss, val_loss, params, alphas,
                            train_batch, val_batch, xi=xi, optimizer=w_opt,
                            opt_state=w_opt_state, fd_eps=fd_eps, has_aux=has_aux, **kw)
    return g[0] if has_aux else g

  eps_dtype = jnp.result_type(jax.tree.leaves(params)[0]) if jax.tree.leaves(params) else None
  fd_compiled, _ = compile_estimator("finite_difference", fd,
                            args + (jnp.asarray(eps[0], eps_dtype),))
  ref_norm = np.linalg.norm(flatten(ref))
  rows = []
  for e in eps:
    g = jax.device_get(fd_compiled(*args, jnp.asarray(e, eps_dtype)))
    abs_err = float(np.linalg.norm(flatten(g) - flatten(ref)))
    rows.append({"eps": e, "abs_err": abs_err,
                 "rel_err": abs_err / ref_norm if ref_norm > 0 else float("inf"),
                 "cos_sim": cosine_similarity(g, ref), "dtype": dtype,
                 "reference": reference})
  return rows


def loglog_slope(rows: Sequence[Row], eps_min: float = 0.0,
                 eps_max: float = float("inf"), key: str = "abs_err") -> float:
  """Least-squares slope of log10(err) against log10(eps) for eps in [eps_min, eps_max].

  Args:
    rows: `fd_eps_sweep` rows.
    eps_min, eps_max: the fitted range (inclusive).
    key: 'abs_err' or 'rel_err' (same slope).

  Returns:
    The slope (2 in the truncation regime of a smooth loss); NaN with fewer
    than two usable points.
  """
  pts = [(np.log10(r["eps"]), np.log10(r[key])) for r in rows
         if eps_min <= r["eps"] <= eps_max and r[key] > 0 and np.isfinite(r[key])]
  if len(pts) < 2:
    return float("nan")
  x, y = np.array(pts).T
  return float(np.polyfit(x, y, 1)[0])


def summarize_sweep(rows: Sequence[Row], floor_factor: float = 10.0) -> Row:
  """The round-off floor and the truncation regime of an eps sweep.

  The floor is the smallest error. The truncation regime is the run of step
  sizes above the floor's eps along which the error keeps growing with eps,
  restricted to errors above `floor_factor` times the floor; its log-log slope
  is 2 for a smooth loss (eq. 8 is a central difference). A much steeper rise
  means the perturbation crosses kinks (ReLU, max-pool) of the network. Below
  the floor's eps, round-off grows like 1/eps (slope about -1).

  Args:
    rows: `fd_eps_sweep` rows (any order).
    floor_factor: how far above the floor the fitted points must be.

  Returns:
    {'floor_rel_err', 'eps_at_floor', 'truncation_slope', 'fit_eps_min',
    'fit_eps_max', 'roundoff_slope'} (NaN where undefined).
  """
  nan = float("nan")
  rows = sorted((r for r in rows if np.isfinite(r["rel_err"])), key=lambda r: -r["eps"])
  out = dict(floor_rel_err=nan, eps_at_floor=nan, truncation_slope=nan, fit_eps_min=nan,
             fit_eps_max=nan, roundoff_slope=nan)
  if not rows:
    return out
  i = min(range(len(rows)), key=lambda k: rows[k]["rel_err"])
  floor = rows[i]["rel_err"]
  out.update(floor_rel_err=float(floor), eps_at_floor=float(rows[i]["eps"]))
  run, prev = [], floor
  for r in reversed(rows[:i]):  # from the floor towards larger eps
    if r["rel_err"] < prev:
      break
    run.append(r)
    prev = r["rel_err"]
  fit = [r for r in run if r["rel_err"] > floor_factor * floor]
  if len(fit) >= 2:
    out.update(truncation_slope=loglog_slope(fit, key="rel_err"),
               fit_eps_min=float(min(r["eps"] for r in fit)),
               fit_eps_max=float(max(r["eps"] for r in fit)))
  if len(rows) - i >= 3:
    out["roundoff_slope"] = loglog_slope(rows[i + 1:], key="rel_err")
  return out


def format_table(rows: Sequence[Row]) -> str:
  """An aligned text table of `compare` rows.

  Columns: method, cos-sim, rel-err, ms/call, compile s, peak MiB (XLA's
  memory analysis; the device's running peak in brackets when reported).
  """
  head = ("method", "cos-sim", "rel-err", "ms/call", "compile s", "peak MiB")
  body = []
  for r in rows:
    peak = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.1f}"
    if r.get("device_peak_bytes") is not None:
      peak += f" [{r['device_peak_bytes'] / 2**20:.1f}]"
    body.append((r["method"], f"{r['cos_sim']:.6f}", f"{r['rel_err']:.2e}",
                 f"{r['ms_per_call']:.2f}", f"{r['compile_s']:.2f}", peak))
  widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
  line = lambda cells: "  ".join(
      c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])
