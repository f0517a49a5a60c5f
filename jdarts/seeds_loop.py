"""The loop behind `jdarts search --config.num_seeds=K`: K searches in one program.

The paper runs every search 4 times with different seeds and keeps the best
cell (sec. 3.3). Here the K searches run as one compiled step: the per-device
search step `jax.vmap`ped over a seed axis (`jdarts.seeds`), wrapped by the
configured device map, so K seeds x D devices is one program. Search k is
exactly `jdarts search` with `--config.seed=<seed + k>` (same initial weights
and alphas, same data order, same RNG), up to float round-off: XLA computes
the batched program with other kernels.

Data: every search reads its own streams (their order follows its seed),
stacked into (B, K, ...) batches; with `data.seed >= 0` the order is the same
for all, one stream is read and broadcast (`vmap` in_axes None).

Writes to `workdir`:

* `seed_<k>/`        search k's `genotype.json`, `alphas.json`, `metrics.jsonl`,
  `alpha_history.jsonl`, `tb/`, `summary.json` and `config.json` (the config
  that runs it alone), as a single search writes
  them (`jdarts plot --workdir=WORKDIR/seed_<k>` works on it);
* `seeds.json`, `seeds.md` one row per search: seed, genotype, held-out
  metrics of the supernet, skip-connections in the normal cell;
* `summary.json`     the rows, steps and times;
* `checkpoints/`     the stacked state of all searches and every stream's
  position: a rerun resumes all of them exactly.

Not with the per-search diagnostics that stop or probe one search
(`collapse.*`, `hypergrad_probe_every`): run those seeds alone.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict

import jax
import numpy as np

from jdarts import arch_stats
from jdarts import collapse
from jdarts import evaluation
from jdarts import event_writer
from jdarts import experiment
from jdarts import parallel
from jdarts import runs
from jdarts import seeds as seeds_lib
from jdarts.config_lib import ConfigError

log = logging.getLogger("jdarts")


def validate(cfg) -> None:
  """ConfigError for settings a K-seed search cannot run (after `experiment.validate`)."""
  if cfg.collapse.every_epochs or cfg.get("hypergrad_probe_every", 0):
    raise ConfigError(
        f"num_seeds={cfg.num_seeds} runs without collapse.every_epochs and "
        "hypergrad_probe_every (they measure or stop one search); set them to 0, or run "
        "that seed alone with --config.seed=SEED.")


def _shared_order(cfg) -> bool:
  return cfg.data.get("seed", -1) is not None and cfg.data.get("seed", -1) >= 0


def run(cfg, workdir: str) -> Dict[str, Any]:
  """Runs `cfg.num_seeds` searches in one program and writes their outputs to `workdir`.

  Args:
    cfg: a search config with `num_seeds` >= 2.
    workdir: output directory; created if absent.

  Returns:
    A summary dict: 'seeds' (one row per search: 'seed', 'dir', 'genotype',
    'skip_connect' and '<set>_<metric>' per held-out set and metric),
    'steps', 'compile_seconds', 'seconds'.
  """
  experiment.validate(cfg)
  collapse.validate(cfg.collapse)
  validate(cfg)
  K = cfg.num_seeds
  cfgs = [seeds_lib.seed_config(cfg, k) for k in range(K)]
  r = runs.Run(cfg, workdir, "search", finite_keys=("train_loss", "val_loss"),
               nan_hint="lower optim.learning_rate or arch.learning_rate.")
  dirs = [seeds_lib.seed_dir(workdir, k) for k in range(K)]
  if r.main:
    r.writer.close()  # rows go to each seed's directory instead
    for d, c in zip(dirs, cfgs):
      os.makedirs(d, exist_ok=True)
      # The config that runs this search alone (seed + k, num_seeds 1).
      runs.write_json(os.path.join(d, "config.json"), json.loads(c.to_json_best_effort()))
    tbs = [event_writer.open_tensorboard(d) if cfg.get("tensorboard", True) else None
           for d in dirs]  # None also when the tensorboard package is missing
    r.writer = seeds_lib.SeedWriters([event_writer.MultiWriter(
        [runs.MetricsWriter(d)] + ([tb] if tb else [])) for d, tb in zip(dirs, tbs)])
  shared = _shared_order(cfg)
  pid, pcount = jax.process_index(), jax.process_count()
  datas = [experiment.build_data(c, pid, pcount) for c in (cfgs[:1] if shared else cfgs)]
  data = datas[0]
  spe = experiment.steps_per_epoch(cfg, data)
  total = r.total_steps(spe)
  num_devices, global_devices = r.devices()
  axis = parallel.AXIS if global_devices > 1 else None
  space = experiment.device_space(cfg, data.info, axis)
  setups = [experiment.init_search(c, space, spe) for c in cfgs]
  step = experiment.make_step(cfg, space, setups[0], axis)
  state = seeds_lib.stack_states([jax.device_get(s.state) for s in setups])
  del setups
  step_fn = r.parallel_step(seeds_lib.vmap_step(step, state, shared_batches=shared),
                            num_devices, global_devices, num_batches=2)

  restored = r.open_checkpoints(spe, state)
  if restored is not None:
    state, extra, _ = restored
    for d, it in zip(datas, extra["streams"]):
      d.train.set_state(it["train_iter"])
      d.val.set_state(it["val_iter"])
  start = int(np.asarray(state.step)[0])
  state = step_fn.put_state(state)
  if r.main:
    for d in dirs:
      runs.trim_jsonl(os.path.join(d, "metrics.jsonl"),
                      lambda row: row.get("kind") != "final" and row.get("step", 0) <= start)
      runs.trim_jsonl(os.path.join(d, "alpha_history.jsonl"),
                      lambda row: row.get("step", 0) <= start)
  eval_space = experiment.build_space(cfg, data.info)
  eval_step = parallel.jit(evaluation.make_eval_step(eval_space))
  log.info("search: %d seeds (%d..%d) of %s on %s in one program, %d steps (%d per epoch), "
           "arch method %s, %s data order, %d device(s) (%s)", K, cfg.seed, cfg.seed + K - 1,
           cfg.space, cfg.data.name, total, spe, cfg.arch.method,
           "one shared" if shared else "per-seed", global_devices, step_fn.backend)
  shown = ("loss",) + tuple(space.metric_names)[:1]

  def advance(state, step):
    if shared:
      train_batch, val_batch = next(data.train), next(data.val)
    else:
      train_batch = seeds_lib.stack_batches([next(d.train) for d in datas])
      val_batch = seeds_lib.stack_batches([next(d.val) for d in datas])
    state, metrics = step_fn(state, train_batch, val_batch)
    return state, step_fn.get_metrics(metrics)

  def on_log(step, last, rate):
    if r.bar is not None:  # the mean over the searches
      r.bar.set_postfix({**{f"train_{k}": f"{np.mean(last[f'train_{k}']):.3f}" for k in shown},
                         **{f"val_{k}": f"{np.mean(last[f'val_{k}']):.3f}" for k in shown[1:]},
                         f"{data.unit}/s": f"{rate:.0f}"}, refresh=False)

  def on_step(step, state):
    epoch_end = step % spe == 0 or step == total
    if not r.main or not (epoch_end or step % cfg.log_every == 0):
      return
    alphas = jax.device_get(step_fn.get_state(state).alphas)
    for k, d in enumerate(dirs):
      a_k = jax.tree_util.tree_map(lambda x: x[k], alphas)
      writer = r.writer.writers[k]
      if not epoch_end:
        writer.write(step, "arch", arch_stats.alpha_entropy(a_k))
        continue
      genotype = experiment.save_outputs(d, space, a_k)
      writer.write(step, "arch", {**arch_stats.alpha_entropy(a_k),
                                  **arch_stats.genotype_stats(space, genotype)})
      writer.text(step, "genotype", space.format_genotype(genotype))
      with open(os.path.join(d, "alpha_history.jsonl"), "a") as f:
        f.write(json.dumps({"step": int(step), "epoch": step / spe,
                            "genotype": space.genotype_json(genotype),
                            "alphas": runs.to_jsonable(a_k)}) + "\n")
      r.say(f"epoch {step / spe:.2f} seed {cfg.seed + k} genotype: "
            f"{space.format_genotype(genotype)}")

  def extra(step):
    return {"streams": [{"train_iter": d.train.get_state(), "val_iter": d.val.get_state()}
                        for d in datas], "epoch": step / spe}

  state, step, compile_seconds = r.steps(
      state, start, total, advance, items_per_step=2 * K * cfg.batch_size * data.items_per_row,
      steps_per_epoch=spe, rate_name=f"{data.unit}_per_sec",
      host_state=lambda s: jax.device_get(step_fn.get_state(s)), extra=extra,
      on_log=on_log, on_step=on_step, interval_means=("grad_clipped",))

  state = jax.device_get(step_fn.get_state(state))
  rows, metric_keys = [], []
  for k, d in enumerate(dirs):
    s = seeds_lib.unstack_state(state, k)
    genotype = space.derive(jax.device_get(s.alphas))
    row = {"seed": cfg.seed + k, "dir": os.path.basename(d),
           "genotype": space.format_genotype(genotype),
           "skip_connect": seeds_lib.skip_count(arch_stats.genotype_stats(space, genotype))}
    seed_summary = {"steps": step, "compile_seconds": compile_seconds,
                    "genotype": space.genotype_json(genotype)}
    for name, batches in data.eval_batches.items():
      res = evaluation.evaluate(eval_space, eval_step, s.params, s.alphas, batches(),
                                batch_size=cfg.batch_size)
      got = {f"{name}_{m}": v for m, v in res.items() if m != "count"}
      seed_summary.update(got)
      row.update(got)
      metric_keys += [m for m in got if m not in metric_keys]
    rows.append(row)
    if r.main:
      experiment.save_outputs(d, space, s.alphas)
      r.writer.writers[k].write(step, "final", {m: v for m, v in seed_summary.items()
                                                if isinstance(v, (int, float))})
      runs.write_json(os.path.join(d, "summary.json"), seed_summary)
  summary = {"seeds": rows, "steps": step, "compile_seconds": compile_seconds}
  if r.main:
    table = seeds_lib.write_summary(workdir, rows, metric_keys)
    for row in rows:
      shown_metrics = ", ".join(f"{m} {100 * row[m]:.2f}%" for m in metric_keys
                                if m.endswith("accuracy"))
      print(f"seed {row['seed']}: {shown_metrics}; {row['genotype']}")
    print(f"{K} searches written to {workdir}/seed_*/; table in {table}")
  summary["seconds"] = time.time() - r.t_start
  if r.main:
    runs.write_json(r.path("summary.json"), summary)
    r.writer.close()
  return summary
