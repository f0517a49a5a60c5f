"""The loop behind `jdarts train` for language models (configs with `trainer='lm'`).

Trains a recurrent genotype's one-cell language model from scratch
(`jdarts.spaces.darts_rnn.network`; paper A.2.2 PTB, A.2.4 WikiText-2) as
the reference's rnn/train.py does:

* SGD at `optim.learning_rate` (clip, then coupled weight decay), switched
  to averaged SGD by AWD-LSTM's non-monotone trigger: after an SGD epoch whose
  validation loss exceeds the best of all but the last `nonmono` epochs'
  (PyTorch ASGD with t0=0, lambd=0: the same step, plus the running mean of
  the iterates since the switch, which is what validation and test then use);
* random-length BPTT: L = max(5, int(N(b, 5))), b = bptt w.p. 0.95 else
  bptt / 2, L <= bptt + `data.max_seq_len_delta`; the step's learning rate
  is scaled by L / bptt. L is drawn from (seed, step), so a resumed run draws
  the same lengths. Segments are padded to a multiple of
  `data.length_bucket` (one compilation per padded length); the hidden state
  stops at the real end and the padding is masked out of the loss;
* the hidden state is carried across segments and reset at each epoch start.

An epoch here is a fixed number of steps, (tokens per stream - 1) // bptt,
starting at the first token; a segment that would run past the end starts
over at the first token (the reference instead stops at the end: its epochs
have a random number of steps). Per epoch: validation and test perplexity
(batches of `data.eval_batch_size`, `data.test_batch_size` streams, dropout
off) in metrics.jsonl. For smoke tests, `asgd_after_epochs` > 0 switches
after that many epochs whatever the trigger says and `data.train_tokens` > 0
trains on the first tokens only. Checkpoints hold the weights, the averaged weights,
the optimiser state, the carried state, the data position and the trigger's
history: a stopped run resumes exactly. One device (multi-device LM training
is not implemented).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdarts import optim, parallel, runs, schedules
from jdarts.config_lib import ConfigError
from jdarts.data import text
from jdarts.spaces.darts_rnn import network as network_lib

log = logging.getLogger("jdarts")


class LMState(NamedTuple):
  """Everything a language-model training step changes (one pytree, checkpointed whole)."""
  params: Any
  opt_state: Any
  carry: jnp.ndarray      # (B, H) hidden state after the last segment
  avg: Any                # ASGD's running mean of the iterates (params' structure)
  avg_count: jnp.ndarray  # iterates averaged so far (0 before the switch)
  step: jnp.ndarray
  rng: jnp.ndarray


def validate(cfg) -> None:
  """ConfigError naming the first impossible setting of an LM train config."""
  runs.validate_blocks(cfg)
  optim.validate_weight(cfg.optim)
  runs.check_int(cfg, "nonmono", 1)
  runs.check_int(cfg, "asgd_after_epochs", 0, " (0: the trigger alone)")
  runs.check_int(cfg.data, "train_tokens", 0, " (0: all)", "data.")
  for key, low in (("max_seq_len_delta", 0), ("length_bucket", 1), ("eval_batch_size", 1),
                   ("test_batch_size", 1)):
    runs.check_int(cfg.data, key, low, "", "data.")
  if cfg.data.name not in ("ptb", "wikitext2", "pydoc"):
    raise ConfigError(f"data.name={cfg.data.name!r}: trainer 'lm' reads ptb, wikitext2 "
                      "or pydoc.")
  network_lib.load_genotype(cfg.genotype)


def seq_len(seed: int, step: int, bptt: int, delta: int) -> int:
  """The reference's random BPTT length of `step` (module docstring), from (seed, step)."""
  r = np.random.default_rng([seed, step])
  base = bptt if r.random() < 0.95 else bptt / 2.0
  return int(min(max(5, int(r.normal(base, 5))), bptt + delta))


def make_train_step(net, tx):
  """`(state, batch, valid (T,), lr_scale, asgd, reset) -> (state, aux)`, jit-able."""
  def step(state: LMState, batch, valid, lr_scale, asgd, reset):
    carry = jnp.where(reset, jnp.zeros_like(state.carry), state.carry)
    key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(p):
      loss, aux, new_carry = net.loss(p, batch, key, carry, valid=valid)
      return loss, (aux, new_carry)
    (_, (aux, new_carry)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(g, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: u * lr_scale.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    count = state.avg_count + asgd.astype(jnp.int32)
    mu = 1.0 / jnp.maximum(count, 1)
    avg = jax.tree_util.tree_map(
        lambda a, p: jnp.where(asgd, a + (p - a) * mu.astype(p.dtype), a), state.avg, params)
    return LMState(params, opt_state, jax.lax.stop_gradient(new_carry), avg, count,
                   state.step + 1, state.rng), aux
  return step


def evaluate(net, eval_step, params, data: np.ndarray, bptt: int) -> Dict[str, float]:
  """Mean NLL per token and perplexity of a batchified split, dropout off, state carried."""
  carry, total, count = net.init_carry(data.shape[0]), 0.0, 0.0
  for batch in text.eval_batches(data, bptt):
    (s, n), carry = eval_step(params, batch, carry)
    total, count = total + float(s), count + float(n)
  loss = total / max(count, 1.0)
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def run(cfg, workdir: str) -> Dict[str, Any]:
  """Trains `cfg.genotype`'s language model and writes its outputs to `workdir`.

  Outputs as `jdarts.train_loop` (config.json, genotype.json, metrics.jsonl
  with 'train' and 'epoch' rows, summary.json, checkpoints/); a rerun in the
  workdir resumes. Returns the summary (final and best-validation
  perplexities, params, steps).
  """
  validate(cfg)
  r = runs.Run(cfg, workdir, "train", finite_keys=("loss",),
               nan_hint="lower optim.learning_rate or optim.grad_clip.")
  genotype = network_lib.load_genotype(cfg.genotype)
  d, b, bptt = cfg.data, cfg.batch_size, cfg.model.bptt
  corpus = text.load_corpus(d.name, d.data_dir or None)
  ids = corpus.train[:d.train_tokens] if d.get("train_tokens", 0) else corpus.train
  train = text.batchify(ids, b, f"{d.name} train")
  held = {"valid": text.batchify(corpus.valid, d.eval_batch_size, f"{d.name} valid"),
          "test": text.batchify(corpus.test, d.test_batch_size, f"{d.name} test")}
  net = network_lib.RNNNetwork(genotype, len(corpus.words), cfg.model.to_dict())
  if r.main:
    runs.write_json(r.path("genotype.json"), {"recurrent": [list(e) for e in genotype.recurrent],
                                               "concat": list(genotype.concat)})
  spe = (train.shape[1] - 1) // bptt
  total = r.total_steps(spe)
  tx = optim.weight_optimizer(cfg.optim, schedules.make_schedule(cfg.optim, cfg.epochs, spe))
  params = net.init(jax.random.PRNGKey(cfg.seed))
  avg = runs.copy_tree(params)  # its own buffers: the step donates both
  state = LMState(params, tx.init(params), net.init_carry(b), avg, jnp.zeros((), jnp.int32),
                  jnp.zeros((), jnp.int32), jax.random.PRNGKey(cfg.seed + 1))
  loop = {"pos": 0, "asgd": False, "history": [], "best": None, "last_eval": {}}
  restored = r.open_checkpoints(spe, jax.device_get(state))
  if restored is not None:
    state, extra, _ = restored
    loop.update(extra["loop"])
    loop["asgd"] = bool(loop["asgd"])  # the checkpoint's JSON may hand back a number
  start = int(state.step)
  if r.main:  # rows after the checkpoint belong to steps this run replays
    runs.trim_jsonl(r.path("metrics.jsonl"),
                    lambda row: row.get("kind") != "final" and row.get("step", 0) <= start)
  step_fn = parallel.jit(make_train_step(net, tx), donate_argnums=0)

  def eval_fn(p, batch, carry):
    _, aux, carry = net.loss(p, batch, None, carry)
    return (aux["loss"] * aux["count"], aux["count"]), carry
  eval_step = parallel.jit(eval_fn)
  log.info("train: language model of %s on %s (%d words), %d steps (%d per epoch), %d params",
           cfg.genotype, d.name, len(corpus.words), total, spe, net.count_params())

  def advance(state, step):
    length = seq_len(cfg.seed, step, bptt, d.max_seq_len_delta)
    reset = step % spe == 0
    if reset or loop["pos"] + length > train.shape[1] - 1:
      loop["pos"] = 0
    i, t_pad = loop["pos"], -(-length // d.length_bucket) * d.length_bucket
    inputs, targets = np.zeros((2, b, t_pad), np.int32)
    inputs[:, :length], targets[:, :length] = train[:, i:i + length], train[:, i + 1:i + 1 + length]
    valid = np.arange(t_pad) < length
    batch = {"inputs": inputs, "targets": targets,
             "token_mask": np.broadcast_to(valid, (b, t_pad)).astype(np.float32)}
    loop["pos"] = i + length
    return step_fn(state, batch, valid, np.float32(length / bptt), np.bool_(loop["asgd"]),
                   np.bool_(reset))

  def on_step(step, state):
    if step % spe and step != total:
      return
    host = jax.device_get(state)
    weights = host.avg if loop["asgd"] else host.params
    res = {f"{k}_{m}": v for k, data in held.items()
           for m, v in evaluate(net, eval_step, weights, data, bptt).items()}
    row = dict(res, epoch=step / spe, asgd=loop["asgd"])
    if not loop["asgd"]:
      hist, n = loop["history"], cfg.nonmono
      forced = cfg.get("asgd_after_epochs", 0) and step // spe >= cfg.asgd_after_epochs
      if forced or (len(hist) > n and res["valid_loss"] > min(hist[:-n])):
        loop["asgd"] = row["switched_to_asgd"] = True
        r.say(f"step {step}: validation stopped improving; switching to averaged SGD")
      hist.append(res["valid_loss"])
    if loop["best"] is None or res["valid_loss"] < loop["best"]["valid_loss"]:
      loop["best"] = dict(res, step=step)
    loop["last_eval"] = res
    if r.writer is not None:
      r.writer.write(step, "epoch", row)
    r.say(f"epoch {step / spe:.2f}: valid ppl {res['valid_perplexity']:.2f}, "
          f"test ppl {res['test_perplexity']:.2f}{' (averaged)' if row['asgd'] else ''}")

  state, step, compile_seconds = r.steps(
      state, start, total, advance, items_per_step=b * bptt, steps_per_epoch=spe,
      host_state=jax.device_get, extra=lambda step: {"loop": loop, "epoch": step / spe},
      on_step=on_step, rate_name="tokens_per_sec")
  best = loop["best"] or {}
  summary = dict(loop["last_eval"], steps=step, compile_seconds=compile_seconds,
                 genotype=str(cfg.genotype), params=net.count_params(), asgd=loop["asgd"],
                 **{f"best_{k}": v for k, v in best.items()})
  r.finish(step, summary)
  if r.main and loop["last_eval"]:
    print(f"final: valid perplexity {summary['valid_perplexity']:.2f}, "
          f"test perplexity {summary['test_perplexity']:.2f}")
  return summary
