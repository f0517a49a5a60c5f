"""Model size: parameters and multiply-adds of a network for one image.

`summarize(config)` backs `jdarts summary`. For an evaluation config (a
`model.name` from `jdarts.models.MODELS`) it reports

* `params`: parameters without the auxiliary head, as the reference's
  `utils.count_parameters_in_MB` (quark0/darts) and the paper's tables;
* `params_total`: including the auxiliary head;
* `mult_adds`: multiply-accumulates of one inference forward pass (the
  auxiliary head does not run at inference).

For a search config (`space`) it reports the supernet's weights (alphas
excluded) and multiply-adds with every candidate operation evaluated.

Multiply-adds are counted on the jaxpr, not estimated: `count_macs` walks the
traced program (into jit, scan, cond and custom-derivative bodies) and adds
up every `conv_general_dilated` (output elements x input channels per group x
kernel window) and `dot_general` (output elements x contracted size). This
counts exactly what the reference's convolution and linear layers do, and
nothing else (pooling, BatchNorm, additions are free in this convention).
Depthwise convolutions are traced in their grouped form for counting (the
'dense' CPU implementation would count C times the work it stands for).

With this convention DARTS_V2 on ImageNet (C=48, 14 cells) has 529,911,552
multiply-adds, the same as forward hooks on the reference's Conv2d/Linear
layers; the paper's 574M counts more than conv/linear layers (the question is
open in quark0/darts issue #46, where users also measure 523-545M).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Dict

import jax
import jax.extend.core as jcore
import jax.numpy as jnp

from jdarts import config_lib
from jdarts import data as data_lib
from jdarts.data import config_check as data_check
from jdarts import experiment
from jdarts import models
from jdarts import ops
from jdarts.spaces.darts_rnn import network as rnn_network


def _prod(xs) -> int:
  return int(math.prod(int(x) for x in xs))


def _sub_jaxprs(value):
  """Jaxprs held in one equation parameter (a jaxpr, or a tuple of them)."""
  if isinstance(value, jcore.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jcore.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def jaxpr_macs(jaxpr) -> int:
  """Multiply-accumulates of the convolutions and matrix products in `jaxpr`.

  Args:
    jaxpr: a `Jaxpr` or `ClosedJaxpr`.

  Returns:
    The count. A `scan` body counts `length` times, a `cond` counts its most
    expensive branch, a `while` body counts once (its trip count is unknown).
  """
  if isinstance(jaxpr, jcore.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval.shape
      rhs = eqn.invars[1].aval.shape
      rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
      window = _prod(rhs[d] for d in rhs_spec[2:])
      total += _prod(out) * int(rhs[rhs_spec[1]]) * window
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += _prod(eqn.outvars[0].aval.shape) * _prod(lhs[d] for d in lhs_contract)
    elif name == "cond":
      total += max((jaxpr_macs(b) for b in eqn.params["branches"]), default=0)
    elif name == "scan":
      total += int(eqn.params["length"]) * jaxpr_macs(eqn.params["jaxpr"])
    else:
      for key, value in eqn.params.items():
        # Custom-derivative rules are not part of the forward computation.
        if key in ("jvp_jaxpr_fun", "jvp_jaxpr_thunk", "fwd_jaxpr_thunk", "bwd"):
          continue
        for sub in _sub_jaxprs(value):
          total += jaxpr_macs(sub)
  return total


def count_macs(fn: Callable, *args, **kwargs) -> int:
  """Multiply-accumulates of `fn(*args, **kwargs)`, from its jaxpr (nothing runs)."""
  return jaxpr_macs(jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args))


def _image_shape_and_classes(cfg):
  """(H, W, C) and the class count: `data.image_shape`/`num_classes` or the dataset's."""
  d = cfg.data
  shape, classes = d.get("image_shape", None), d.get("num_classes", None)
  if shape is None or classes is None:
    info = data_lib.get_info(d.name)
    shape = info.image_shape if shape is None else shape
    classes = info.num_classes if classes is None else classes
  return tuple(int(s) for s in shape), int(classes)


def _counting_opts(opts):
  # Grouped depthwise convolutions (see the module docstring), local BN.
  return dataclasses.replace(opts, depthwise="xla", bn_axis_name=None)


def load_config_genotype(cfg):
  """The genotype a train config names (`cfg.genotype`), errors as ConfigError."""
  try:
    return models.load_genotype(cfg.model.get("name", "cifar"), cfg.get("genotype", "DARTS_V2"))
  except ValueError as e:
    raise config_lib.ConfigError(f"genotype: {e}") from None


def summarize_eval(cfg, genotype=None) -> Dict[str, Any]:
  """Size of the evaluation network of a train config (`cfg.model.name`)."""
  shape, classes = _image_shape_and_classes(cfg)
  label = "<given>" if genotype is not None else str(cfg.get("genotype", "DARTS_V2"))
  if genotype is None:
    genotype = load_config_genotype(cfg)
  net = models.build_model(cfg.model, classes, genotype=genotype)
  net = net.clone(opts=_counting_opts(net.opts))
  variables = models.abstract_variables(net, shape)
  out = models.count_params(variables["params"])
  x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
  out["mult_adds"] = count_macs(lambda v, im: net.apply(v, im, train=False), variables, x)
  out.update(model=cfg.model.name, genotype=label, image_shape=list(shape),
             num_classes=classes)
  return out


def summarize_search(cfg) -> Dict[str, Any]:
  """Size of the supernet of a search config (`cfg.space`): weights, alphas apart.

  Everything comes through the space protocol: shapes from
  `space.example_batch(1)`, operations counted in `space.loss`.
  """
  info = data_lib.get_info(cfg.data.name)
  if isinstance(info, data_lib.DatasetInfo):  # image data: data.image_shape may override
    shape, classes = _image_shape_and_classes(cfg)
    info = dataclasses.replace(info, image_shape=shape, num_classes=classes)
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    if "depthwise" in cfg.model:
      cfg.model.depthwise = "xla"  # count grouped convolutions (module docstring)
  space = experiment.build_space(cfg, info)
  batch = jax.eval_shape(lambda: space.example_batch(1))
  params = jax.eval_shape(space.init, jax.random.PRNGKey(0), batch)
  alphas = jax.eval_shape(space.init_alphas, jax.random.PRNGKey(0))
  n_params = ops.count_params(params)
  carry = space.init_carry(1)
  macs = count_macs(lambda p, a, b: space.loss(p, a, b, jax.random.PRNGKey(0), carry)[0],
                    params, alphas, batch)
  out = {"params": n_params, "params_total": n_params, "mult_adds": macs,
         "alphas": ops.count_params(alphas), "space": cfg.space}
  for key in ("image_shape", "num_classes"):
    if hasattr(info, key):
      value = getattr(info, key)
      out[key] = list(value) if isinstance(value, tuple) else value
  return out


def summarize_lm(cfg) -> Dict[str, Any]:
  """Size of a train config's recurrent language model (`trainer='lm'`).

  Weights counted as the reference counts them (the tied embedding/softmax
  once); multiply-adds of one BPTT segment of one stream (`model.bptt` tokens).
  """
  vocab = data_lib.get_info(cfg.data.name).vocab_size
  net = rnn_network.RNNNetwork(rnn_network.load_genotype(cfg.genotype), vocab, cfg.model.to_dict())
  params = jax.eval_shape(net.init, jax.random.PRNGKey(0))
  z = jnp.zeros((1, cfg.model.bptt), jnp.int32)
  batch = {"inputs": z, "targets": z, "deterministic": jnp.ones((1,), bool)}
  macs = count_macs(lambda p: net.loss(p, batch, None, net.init_carry(1))[0], params)
  n = net.count_params()
  return {"params": n, "params_total": n, "mult_adds": macs, "model": "darts_rnn language-model",
          "genotype": str(cfg.genotype), "vocab_size": vocab, "hidden": cfg.model.hidden}


def summarize(cfg, genotype=None) -> Dict[str, Any]:
  """`summarize_eval` for train configs, `summarize_search` for search configs.

  Args:
    cfg: a config from `configs/*.py`.
    genotype: a `Genotype` overriding `cfg.model.genotype` (train configs).

  Returns:
    A dict with at least 'params', 'params_total' and 'mult_adds' (ints).
  """
  if cfg.get("trainer", None) == "lm":
    return summarize_lm(cfg)
  model = cfg.get("model", None)
  if model is not None and model.get("name", None) is not None:
    return summarize_eval(cfg, genotype)
  if cfg.get("space", None) is not None:
    return summarize_search(cfg)
  raise ValueError("config has neither model.name (an evaluation network) nor space "
                   "(a search space); nothing to summarise.")


def format_summary(s: Dict[str, Any]) -> str:
  """A few human-readable lines."""
  what = (f"{s['model']} network, genotype {s['genotype']}" if "model" in s
          else f"{s['space']} supernet (alphas: {s['alphas']:,} values, not counted)")
  shape = (f", input {'x'.join(map(str, s['image_shape']))}, {s['num_classes']} classes"
           if "image_shape" in s else "")
  lines = [f"{what}{shape}",
           f"  params:       {s['params']:>13,}  ({s['params'] / 1e6:.6f}M)"]
  if s["params_total"] != s["params"]:
    lines.append(f"  params_total: {s['params_total']:>13,}  (with the auxiliary head)")
  per = ("one BPTT segment of one stream" if "vocab_size" in s
         else "one image, conv + linear")
  lines.append(f"  mult_adds:    {s['mult_adds']:>13,}  ({s['mult_adds'] / 1e6:.1f}M, {per})")
  return "\n".join(lines)


def _validate(cfg) -> None:
  """The checks of `jdarts train` / `jdarts search` on the model it sizes (ConfigError).

  Only the blocks the summary reads: the model (and genotype) of a train
  config, the space's model block and the dataset of a search config.
  """
  model = cfg.get("model", None)
  if model is not None and model.get("name", None) is not None:
    models.validate_config(model)
    return
  if cfg.get("space", None) is not None:
    if cfg.get("data", None) is not None:
      data_check.validate_block(cfg.data)
    experiment.validate_space(cfg)


def run(cfg, as_json: bool = False) -> str:
  """What `jdarts summary` prints: `format_summary`, or one JSON object.

  The JSON object has the keys of `summarize` (params, params_total,
  mult_adds, and a description of the model).
  """
  _validate(cfg)
  s = summarize(cfg)
  return json.dumps(s) if as_json else format_summary(s)
