"""The `jdarts hypergrad` command: every estimator on one search state, written down.

`run(cfg, workdir)` builds the search state of a config (or restores the
latest checkpoint in `workdir/checkpoints`), takes one search-train and one
search-val batch, and runs `jdarts.hypergrad_compare` on them:

* prints an aligned table (method, cos-sim, rel-err, ms/call, compile s, peak
  MiB) against `unrolled` (the real optax virtual step, differentiated);
* `workdir/hypergrad.json`  the setting, the table's rows and the sweep summary;
* `workdir/fd_sweep.csv`    error of finite differences over eps (1e0..1e-10);
* `workdir/fd_sweep.png`    the same on log-log axes (needs matplotlib).

Settings come from the config's `hypergrad` block (`config_lib.hypergrad_defaults`)
and its `arch` block (xi, virtual_step, fd_eps, Neumann/CG settings), so
`--config.hypergrad.methods=...` or `--config.hypergrad.float64=True` work as
for `jdarts search`.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdarts import experiment
from jdarts import hypergrad
from jdarts import hypergrad_compare as hc
from jdarts import hypergrad_probe as probe_lib
from jdarts import runs
from jdarts import search as search_lib

log = logging.getLogger("jdarts")

CSV_FIELDS = ("eps", "abs_err", "rel_err", "cos_sim", "dtype", "reference")


def build_state(cfg, workdir: Optional[str]):
  """The search state to study, with its space, optimiser, schedule and batches.

  Returns:
    A dict with 'state' (an unreplicated `SearchState`), 'restored_step' (the
    checkpoint's step or None), 'space', 'w_opt', 'schedule', 'info',
    'train_batch', 'val_batch' (the next batch of each search stream: the
    first one, or the one after the checkpoint's data position; as
    {'image': (B, H, W, C) float32, 'label': (B,) int32}).

  Raises:
    ConfigError: the batch is larger than a search split.
    CheckpointMismatchError, CheckpointCorruptError: see `jdarts.checkpoint`.
  """
  data = experiment.build_data(cfg)
  train_it, val_it, info = data.train, data.val, data.info
  space = experiment.build_space(cfg, info)
  schedule, w_opt, _, state = experiment.init_search(
      cfg, space, experiment.steps_per_epoch(cfg, data))
  restored_step = None
  ckpt_dir = os.path.join(workdir, "checkpoints") if workdir else None
  if ckpt_dir and os.path.isdir(ckpt_dir):
    from jdarts import checkpoint
    with checkpoint.Checkpointer(ckpt_dir) as ckpt:
      got = ckpt.restore_latest(jax.device_get(state))
    if got is not None:
      state, extra, restored_step = got
      # The batches the search would have used next, when the checkpoint says.
      if "train_iter" in extra and "val_iter" in extra:
        train_it.set_state(extra["train_iter"])
        val_it.set_state(extra["val_iter"])
      log.info("hypergrad: restored checkpoint step %d from %s", restored_step, ckpt_dir)
  if restored_step is None:
    log.info("hypergrad: no checkpoint%s; using the initial search state",
             f" in {ckpt_dir}" if ckpt_dir else "")
  to_jnp = lambda b: jax.tree_util.tree_map(jnp.asarray, b)
  state = to_jnp(state)
  train_batch, val_batch = to_jnp(next(train_it)), to_jnp(next(val_it))
  return dict(state=state, restored_step=restored_step, space=space, w_opt=w_opt,
              schedule=schedule, info=info, train_batch=train_batch, val_batch=val_batch)


def run(cfg, workdir: Optional[str] = None) -> Dict[str, Any]:
  """Compares the hypergradient estimators on a config's search state.

  Args:
    cfg: a search config with a `hypergrad` block (see
      `config_lib.hypergrad_defaults`).
    workdir: where to read checkpoints from and write hypergrad.json,
      fd_sweep.csv and fd_sweep.png; None: print the table only.

  Returns:
    The dict written to hypergrad.json: 'setting', 'rows' (see
    `hypergrad_compare.compare`), 'fd_sweep' (rows) and 'fd_sweep_summary'.
  """
  experiment.validate(cfg)
  probe_lib.validate(cfg)
  h = cfg.hypergrad
  if workdir:
    runs.prepare_workdir(workdir)
  runs.enable_compilation_cache(cfg.get("compilation_cache_dir", ""))
  built = build_state(cfg, workdir)
  state, space = built["state"], built["space"]
  tb, vb = built["train_batch"], built["val_batch"]
  lr = float(built["schedule"](state.step))
  xi = probe_lib.step_xi(cfg.arch, lr)
  virtual = probe_lib.virtual_step(cfg, built["schedule"])
  opt_kw = ({} if virtual.optimizer is None else
            dict(w_opt=virtual.optimizer, w_opt_state=virtual.state_of(state.w_opt_state)))
  loss = probe_lib.packed_loss(space)
  # The search step's keys and initial carries, packed with each batch.
  k_val, k_train = search_lib.step_keys(state, None)
  carry = state.carry or {"train": None, "val": None}
  tb, vb = (tb, k_train, carry["train"]), (vb, k_val, carry["val"])
  methods = probe_lib.method_list(h.methods)
  setting = {
      "space": cfg.space, "dataset": cfg.data.name, "batch_size": int(cfg.batch_size),
      "model": cfg.model.to_dict(),
      "step": int(state.step), "restored_checkpoint_step": built["restored_step"],
      "xi": xi, "virtual_step": probe_lib.virtual_step_name(cfg.arch),
      "reference": probe_lib.reference_method(h), "repeats": int(h.repeats),
      "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(state.params))),
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
      "jax": jax.__version__, **hypergrad.estimator_options(cfg.arch, cfg.optim.weight_decay)}
  print(f"hypergradient estimators on {cfg.space}/{cfg.data.name}, step {setting['step']}"
        f"{' (restored)' if built['restored_step'] is not None else ' (initial state)'}, "
        f"batch {cfg.batch_size}, xi {xi:.4g}, virtual step {setting['virtual_step']}, "
        f"{jax.default_backend()}; vs {probe_lib.reference_method(h)}:")
  rows = hc.compare(loss, loss, state.params, state.alphas, tb, vb, methods=methods, xi=xi,
                    reference=probe_lib.reference_method(h), repeats=int(h.repeats), **opt_kw,
                    **hypergrad.estimator_options(cfg.arch, cfg.optim.weight_decay))
  print(hc.format_table(rows), flush=True)
  result = {"setting": setting, "rows": rows, "fd_sweep": [], "fd_sweep_summary": None}

  if h.fd_sweep:
    eps = [float(e) for e in np.logspace(np.log10(h.fd_eps_max), np.log10(h.fd_eps_min),
                                         int(h.fd_eps_num))]
    sweep_kw = dict(xi=xi, eps=eps, reference=h.fd_reference, **opt_kw)
    if h.float64:
      with jax.enable_x64(True):
        loss64 = probe_lib.packed_loss(experiment.build_space(
            experiment.with_dtype(cfg, "float64"), built["info"]))
        sweep = hc.fd_eps_sweep(loss64, loss64, state.params, state.alphas, tb, vb,
                                float64=True, **sweep_kw)
    else:
      sweep = hc.fd_eps_sweep(loss, loss, state.params, state.alphas, tb, vb,
                              float64=False, **sweep_kw)
    summary = hc.summarize_sweep(sweep)
    result["fd_sweep"], result["fd_sweep_summary"] = sweep, summary
    print(describe_sweep(summary, sweep, cfg.arch.fd_eps))

  if workdir:
    write_outputs(workdir, result)
  return result


def describe_sweep(summary: Dict[str, Any], sweep, paper_eps: float) -> str:
  """One paragraph on an eps sweep: the truncation regime, the floor, the paper's eps."""
  s = summary
  slope = s["truncation_slope"]
  if np.isfinite(slope):
    trunc = (f"error ~ eps^{slope:.2f} for eps in [{s['fit_eps_min']:.1e}, "
             f"{s['fit_eps_max']:.1e}]")
    if not 1.5 <= slope <= 2.5:
      trunc += (" (not the eps^2 of a smooth loss: the perturbation crosses kinks of "
                "ReLU / max-pool)")
  else:
    trunc = "no truncation regime above the floor"
  roundoff = (f", round-off below it ~ eps^{s['roundoff_slope']:.2f}"
              if np.isfinite(s["roundoff_slope"]) else "")
  return (f"finite differences vs {sweep[0]['reference']} ({sweep[0]['dtype']}): {trunc}; "
          f"floor rel-err {s['floor_rel_err']:.2e} at eps {s['eps_at_floor']:.1e}"
          f"{roundoff}; at the config's fd_eps {paper_eps:g}: rel-err "
          f"{_at_eps(sweep, paper_eps)}")


def _at_eps(sweep, eps) -> str:
  near = min(sweep, key=lambda r: abs(np.log10(r["eps"]) - np.log10(eps)))
  return f"{near['rel_err']:.2e} (at eps {near['eps']:.1e})"


def write_outputs(workdir: str, result: Dict[str, Any]) -> None:
  """Writes hypergrad.json, and fd_sweep.csv / fd_sweep.png when a sweep was run."""
  runs.write_json(os.path.join(workdir, "hypergrad.json"), probe_lib.jsonable(result))
  written = ["hypergrad.json"]
  if result["fd_sweep"]:
    write_csv(os.path.join(workdir, "fd_sweep.csv"), result["fd_sweep"])
    written.append("fd_sweep.csv")
    if plot_sweep(os.path.join(workdir, "fd_sweep.png"), result["fd_sweep"]):
      written.append("fd_sweep.png")
  print(f"wrote {', '.join(written)} to {workdir}")


def write_csv(path: str, sweep: Sequence[Dict[str, Any]]) -> None:
  """One row per eps with the columns of `CSV_FIELDS`."""
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in sweep:
      w.writerow({k: (f"{r[k]:.6e}" if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS})


def plot_sweep(path: str, sweep: Sequence[Dict[str, Any]]) -> bool:
  """Log-log plot of the relative error over eps with an eps^2 guide; False without matplotlib."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("warning: matplotlib is not installed; skipping fd_sweep.png "
          "(pip install matplotlib)", file=sys.stderr)
    return False
  eps = np.array([r["eps"] for r in sweep])
  err = np.array([r["rel_err"] for r in sweep])
  ok = err > 0
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.loglog(eps[ok], err[ok], "o-", label=f"finite difference vs {sweep[0]['reference']}")
  s = hc.summarize_sweep(sweep)
  if np.isfinite(s["fit_eps_max"]):
    r0 = next(r for r in sweep if r["eps"] == s["fit_eps_max"])
    keep = (eps >= s["fit_eps_min"]) & (eps <= s["fit_eps_max"])
    ax.loglog(eps[keep], r0["rel_err"] * (eps[keep] / r0["eps"])**2, "k--", lw=0.8,
              label="eps^2")
  if np.isfinite(s["eps_at_floor"]):
    ax.axhline(s["floor_rel_err"], color="gray", lw=0.6, ls=":", label="round-off floor")
  ax.set_xlabel("eps (step length in weight space)")
  ax.set_ylabel("relative error")
  ax.set_title(f"eq. 8 finite differences ({sweep[0]['dtype']})", fontsize=10)
  ax.grid(True, which="both", lw=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
