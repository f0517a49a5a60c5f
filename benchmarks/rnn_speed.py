"""Tokens per second of the recurrent search step and of language-model training (issue 13).

    python benchmarks/rnn_speed.py --hidden=32 --bptt=10 --batch=16 --vocab=2336

Times, on random token ids, (1) one whole search step of the darts_rnn space
(`jdarts.search.make_search_step`: weight step + architecture step) first
order and with `exact_hvp`, and (2) one training step of the DARTS_V2
language model (`jdarts.lm_train_loop.make_train_step`). Tokens counted:
search 2 B T per step (a train and a val segment), training B T. Prints
median and min over `--repeats` after the compile, with the 1-minute load.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import optax

from jdarts import config_lib, optim, parallel, schedules, search, spaces
from jdarts import lm_train_loop
from jdarts.data import text
from jdarts.spaces.darts_rnn import genotypes, network


def _time(fn, repeats):
  t0 = time.time()
  jax.block_until_ready(fn())
  compile_s = time.time() - t0
  ts = []
  for _ in range(repeats):
    t0 = time.time()
    jax.block_until_ready(fn())
    ts.append(time.time() - t0)
  return compile_s, float(np.median(ts)), float(np.min(ts))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--hidden", type=int, default=32)
  ap.add_argument("--bptt", type=int, default=10)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--vocab", type=int, default=2336)
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--methods", default="first_order,exact_hvp")
  args = ap.parse_args()
  b, t = args.batch, args.bptt
  rng = np.random.RandomState(0)
  seg = lambda: {"inputs": rng.randint(0, args.vocab, (b, t)).astype(np.int32),
                 "targets": rng.randint(0, args.vocab, (b, t)).astype(np.int32)}
  space = spaces.get_space("darts_rnn", dict(hidden=args.hidden, bptt=t),
                           text.TextInfo("bench", args.vocab))
  cfg = config_lib.search_defaults()
  cfg.optim.update(dict(learning_rate=20.0, schedule="constant", momentum=0.0,
                        weight_decay=5e-7, grad_clip=0.25))
  sched = schedules.make_schedule(cfg.optim, 1, 100)
  w_opt, a_opt = optim.weight_optimizer(cfg.optim, sched), optim.arch_optimizer(cfg.arch)
  tr, va = seg(), seg()
  load = os.getloadavg()[0]
  for method in [m for m in args.methods.split(",") if m]:
    cfg.arch.method = method
    step = parallel.jit(search.make_search_step(space, cfg.arch, w_opt, a_opt, sched,
                                           weight_decay=cfg.optim.weight_decay,
                                           optim_cfg=cfg.optim))
    state = [search.init_state(space, jax.random.PRNGKey(0), tr, w_opt, a_opt)]

    def run():
      state[0], m = step(state[0], tr, va)
      return m
    c, med, mn = _time(run, args.repeats)
    print(f"search {method}: compile {c:.1f} s, median {1e3 * med:.1f} ms, min {1e3 * mn:.1f} ms"
          f", {2 * b * t / med:.0f} tokens/s (median), load {load:.1f}")
  net = network.RNNNetwork(genotypes.RNN_DARTS_V2, args.vocab, dict(hidden=args.hidden,
                                                                    bptt=t))
  tx = optax.chain(optax.clip_by_global_norm(0.25), optax.sgd(20.0))
  p = net.init(jax.random.PRNGKey(0))
  st = [lm_train_loop.LMState(p, tx.init(p), net.init_carry(b),
                              jax.tree_util.tree_map(np.array, p), np.int32(0), np.int32(0),
                              jax.random.PRNGKey(1))]
  train_step = parallel.jit(lm_train_loop.make_train_step(net, tx))
  valid = np.ones(t, bool)

  def run_train():
    st[0], m = train_step(st[0], tr, valid, np.float32(1), np.bool_(True), np.bool_(False))
    return m
  c, med, mn = _time(run_train, args.repeats)
  print(f"train DARTS_V2 (ASGD on): compile {c:.1f} s, median {1e3 * med:.1f} ms, "
        f"min {1e3 * mn:.1f} ms, {b * t / med:.0f} tokens/s (median), "
        f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
