"""The loop behind `jdarts search`: a search config run to its genotype.

`run(config, workdir)` builds the experiment (`jdarts.experiment`), drives the
search step on the run skeleton (`jdarts.runs.Run`) and writes to `workdir`:

* `config.json`      the resolved config;
* `metrics.jsonl`    one JSON object per log interval / epoch / final evaluation;
  `grad_clipped` in it is the fraction of the interval's steps whose weight
  gradient the clip scaled (the other metrics: the interval's last step);
  'arch' rows hold the alpha entropy per array every log interval and, each
  epoch, the space's `genotype_stats` (`jdarts.arch_stats`);
* `tb/`              the same rows as TensorBoard events, and the genotype as
  text each epoch (`jdarts.event_writer`; `tensorboard --logdir WORKDIR`);
* `genotype.json`    the derived genotype, rewritten every epoch and at the end;
* `alphas.json`      every alpha array as nested lists, keyed by name;
* `alpha_history.jsonl` one row per epoch: step, epoch, genotype JSON, alphas;
* `report.md`        config, times, throughput, genotype, its evaluation network's
  size, and the pictures of `jdarts plot` in `plots/` (`jdarts.report`);
* `summary.json`     final held-out metrics of the supernet (search-val, test);
* `hypergrad_probe.jsonl` with `hypergrad_probe_every > 0`: every estimator
  of `hypergrad.methods` against `hypergrad.reference` on the state and batches
  of every N-th step (`jdarts.hypergrad_probe.Probe`);
* 'collapse' rows with `collapse.every_epochs > 0`: the dominant eigenvalue of
  the alphas' validation-loss Hessian (`jdarts.collapse`); `collapse.early_stop`
  ends the search by DARTS-ES and keeps the genotype from before the rise;
* `checkpoints/<step>/` the whole search state and the data position
  (`jdarts.checkpoint`), every epoch (or `checkpoint.every_steps`), at the
  end, and on SIGTERM/SIGINT.

Running the same command again in the same workdir resumes from the latest
checkpoint and continues exactly as if never stopped (same batches, same RNG,
same optimiser states), whatever `max_steps` says: `max_steps=2` followed by
`max_steps=4` ends where one `max_steps=4` run ends.

With several processes (multi-host, `jdarts.parallel.maybe_initialize_distributed`)
every process runs this loop on its rows of each global batch; only process 0
writes logs and outputs; all of them write their part of the checkpoints.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict

import jax

from jdarts import arch_stats
from jdarts import collapse
from jdarts import evaluation
from jdarts import experiment
from jdarts import hypergrad_probe
from jdarts import parallel
from jdarts import runs
from jdarts import report
from jdarts import search as search_lib
from jdarts import seeds_loop

log = logging.getLogger("jdarts")


def _fmt(v: float) -> str:
  return f"{v:.3f}"


def run(cfg, workdir: str) -> Dict[str, Any]:
  """Runs an architecture search as configured and writes its outputs to `workdir`.

  Args:
    cfg: a config from `configs/*.py` (checked by `jdarts.experiment.validate`).
    workdir: output directory; created if absent.

  Returns:
    A summary dict: 'genotype' (JSON form), '<set>_<metric>' for every
    held-out set ('search_val', 'test') and metric of the space, 'steps',
    'compile_seconds', 'seconds'.
  """
  if cfg.get("num_seeds", 1) != 1:  # K searches in one program (validated there)
    return seeds_loop.run(cfg, workdir)
  experiment.validate(cfg)
  collapse.validate(cfg.collapse)
  if cfg.collapse.early_stop and jax.process_count() > 1:
    raise runs.ConfigError("collapse.early_stop runs on one process only (process 0 "
                           "measures the eigenvalue); set it False for multi-host runs.")
  if cfg.get("hypergrad_probe_every", 0):
    hypergrad_probe.validate(cfg)  # before any work, not at the first probe
  r = runs.Run(cfg, workdir, "search", finite_keys=("train_loss", "val_loss"),
               nan_hint="lower optim.learning_rate or arch.learning_rate.")
  data = experiment.build_data(cfg, jax.process_index(), jax.process_count())
  spe = experiment.steps_per_epoch(cfg, data)
  total = r.total_steps(spe)
  num_devices, global_devices = r.devices()
  axis = parallel.AXIS if global_devices > 1 else None
  space = experiment.device_space(cfg, data.info, axis)
  setup = experiment.init_search(cfg, space, spe)
  state = setup.state
  step_fn = r.parallel_step(experiment.make_step(cfg, space, setup, axis),
                            num_devices, global_devices, num_batches=2)

  # Host (numpy) values: one copy, written by the primary process; device
  # arrays local to each process cannot be saved under multi-host.
  restored = r.open_checkpoints(spe, jax.device_get(state))
  restored_extra = {}
  if restored is not None:
    state, restored_extra, _ = restored
    data.train.set_state(restored_extra["train_iter"])
    data.val.set_state(restored_extra["val_iter"])
  start = int(state.step)
  state = step_fn.put_state(state)
  probe_path = r.path("hypergrad_probe.jsonl")
  if r.main:
    # Rows after the checkpoint (or of an earlier run, when starting at 0) belong
    # to steps this run replays.
    runs.trim_jsonl(r.path("metrics.jsonl"),
                    lambda row: row.get("kind") != "final" and row.get("step", 0) <= start)
    runs.trim_jsonl(probe_path, lambda row: row.get("step", 0) < start)
    runs.trim_jsonl(r.path("alpha_history.jsonl"), lambda row: row.get("step", 0) <= start)
  # Held-out evaluation runs on one device, with batch statistics of its batch.
  eval_space = experiment.build_space(cfg, data.info)
  eval_step = parallel.jit(evaluation.make_eval_step(eval_space))
  log.info("search: %s on %s, %d steps (%d per epoch), arch method %s, step kind %s, "
           "%d weights, %d device(s) (%s)", cfg.space, cfg.data.name, total, spe,
           cfg.arch.method, search_lib.step_kind_for(cfg.arch),
           sum(x.size for x in jax.tree_util.tree_leaves(step_fn.get_state(state).params)),
           global_devices, step_fn.backend)
  monitor = None
  if cfg.collapse.every_epochs and r.main:
    held_out = data.eval_batches.get("search_val") or next(iter(data.eval_batches.values()))
    monitor = collapse.Monitor(cfg.collapse, eval_space, next(iter(held_out())),
                               cfg.batch_size, cfg.seed)
    if "collapse" in restored_extra:  # DARTS-ES's history: the resumed run stops as this one
      monitor.load_state_dict(restored_extra["collapse"],
                              jax.device_get(step_fn.get_state(state).alphas))
  probe = None
  if cfg.get("hypergrad_probe_every", 0) and r.main:
    probe = hypergrad_probe.Probe(cfg, eval_space, setup.w_opt, setup.schedule, probe_path)
  timing = {"probe": 0.0}
  stopped = {}  # DARTS-ES: the step at which the search stopped
  shown = ("loss",) + tuple(space.metric_names)[:1]

  def advance(state, step):
    train_batch, val_batch = next(data.train), next(data.val)
    if probe is not None and probe.due(step):
      t0 = time.time()
      rows = probe(step, step_fn.get_state(state), train_batch, val_batch)
      r.say(probe.format(step, rows))
      timing["probe"] += time.time() - t0
    state, metrics = step_fn(state, train_batch, val_batch)
    return state, step_fn.get_metrics(metrics)

  def on_log(step, last, rate):
    if r.bar is not None:
      r.bar.set_postfix({**{f"train_{k}": _fmt(last[f"train_{k}"]) for k in shown},
                         **{f"val_{k}": _fmt(last[f"val_{k}"]) for k in shown[1:]},
                         f"{data.unit}/s": f"{rate:.0f}"}, refresh=False)

  def on_step(step, state):
    epoch_end = step % spe == 0 or step == total
    if r.main and not epoch_end and step % cfg.log_every == 0:
      r.writer.write(step, "arch", arch_stats.alpha_entropy(
          jax.device_get(step_fn.get_state(state).alphas)))
    if epoch_end:
      alphas = jax.device_get(step_fn.get_state(state).alphas)
      if r.main:
        genotype = experiment.save_outputs(workdir, space, alphas)
        r.writer.write(step, "arch", {**arch_stats.alpha_entropy(alphas),
                                      **arch_stats.genotype_stats(space, genotype)})
        r.writer.text(step, "genotype", space.format_genotype(genotype))
        # The architecture over the search (collapse diagnostics, e.g. Single-DARTS
        # sec. 5.2: parameter-free operations taking over).
        with open(r.path("alpha_history.jsonl"), "a") as f:
          f.write(json.dumps({"step": int(step), "epoch": step / spe,
                              "genotype": space.genotype_json(genotype),
                              "alphas": runs.to_jsonable(alphas)}) + "\n")
        r.say(f"epoch {step / spe:.2f} genotype: {space.format_genotype(genotype)}")
        if monitor is not None and monitor.due(step // spe) and step % spe == 0:
          s = step_fn.get_state(state)
          row, stop = monitor(step, jax.device_get(s.params), alphas)
          r.writer.write(step, "collapse", row)
          r.say(f"epoch {step // spe} dominant alpha-Hessian eigenvalue "
                f"{row['dominant_eigenvalue']:.4g}")
          if stop:
            stopped["at"] = step
            return True

  warm = None
  if step_fn.backend == "none" and start < total:
    # The held-out evaluation's programs compile beside the search step's.
    try:
      samples = evaluation.distinct_batches(data.eval_batches, cfg.batch_size, eval_space)
    except Exception as e:  # pylint: disable=broad-except
      # Only a head start: the evaluation at the end reads the sets again and says what fails.
      log.warning("held-out evaluation not compiled ahead (%s: %s)", type(e).__name__, e)
      samples = []
    if samples:
      first = step_fn.get_state(state)
      warm = evaluation.WarmUp(eval_step, *runs.copy_tree((first.params, first.alphas)), samples)
  state, step, compile_seconds = r.steps(
      state, start, total, advance, items_per_step=2 * cfg.batch_size * data.items_per_row,
      steps_per_epoch=spe, rate_name=f"{data.unit}_per_sec",
      host_state=lambda s: jax.device_get(step_fn.get_state(s)),
      extra=lambda step: {"train_iter": data.train.get_state(),
                          "val_iter": data.val.get_state(), "epoch": step / spe,
                          **({} if monitor is None else {"collapse": monitor.state_dict()})},
      on_log=on_log, on_step=on_step,
      # Fraction of the interval's steps whose weight gradient the clip scaled.
      interval_means=("grad_clipped",))

  state = step_fn.get_state(state)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    # Every process must end with the same architecture; fails loudly if not.
    multihost_utils.assert_equal(jax.device_get(state.alphas),
                                 "the processes disagree on the alphas")
  summary = {"steps": step, "compile_seconds": compile_seconds}
  final_alphas = state.alphas
  if stopped:  # DARTS-ES keeps the architecture from before the eigenvalue's rise
    kept_step, final_alphas = monitor.kept()
    summary["early_stopped"] = {"step": stopped["at"], "kept_step": kept_step}
    r.say(f"DARTS-ES: stopped at step {stopped['at']}; keeping the genotype of step "
          f"{kept_step}")
  genotype = space.derive(jax.device_get(final_alphas))
  summary["genotype"] = space.genotype_json(genotype)
  if r.main:
    experiment.save_outputs(workdir, space, final_alphas)
  if warm is not None:
    warm.join()
  for name, batches in data.eval_batches.items():
    res = evaluation.evaluate(eval_space, eval_step, state.params, state.alphas, batches(),
                              batch_size=cfg.batch_size)
    summary.update({f"{name}_{k}": v for k, v in res.items() if k != "count"})
    if r.main:
      keys = [k for k in res if k not in ("loss", "count")] + ["loss"]
      shown_metrics = ", ".join(f"{k}: {100 * res[k]:.2f}%" if k.endswith("accuracy")
                                else f"{k}: {res[k]:.4f}" for k in keys)
      print(f"supernet {name} {shown_metrics} ({int(res['count'])} held-out examples)")
  r.finish(step, summary)
  if r.main and cfg.get("report", True):
    print(f"report written to {report.write_report(workdir, cfg, space, genotype, summary)}")
    print(f"genotype written to {r.path('genotype.json')}: "
          f"{space.format_genotype(genotype)}")
  return summary
