"""The search-space protocol: the one seam between a search space and everything above it.

The search step, the loops, the CLI, checkpointing, `jdarts summary` and the
hypergradient tools see a space only through `SearchSpace`; a new space is a
new class registered in `SPACES` (usually a package under `jdarts/spaces/`),
with no edit anywhere else::

    from jdarts.spaces import SPACES, SpaceBase

    @SPACES.register("my_space")
    class MySpace(SpaceBase):
      ...

    # configs/my_search.py: c.space = "my_space"; c.model = {...}

Two pytrees, never mixed: `params` (network weights) and `alphas`
(architecture parameters). A space owns neither: every function takes them and
returns new values. Batches are dicts of arrays whose leading axis is the
example axis (B); `batch.get('mask')`, when present, is (B,) with 0 on the
padding rows of a final evaluation batch, which must not count.

`carry` is state a space threads from one batch to the next of the same stream
(a recurrent hidden state across BPTT segments); feed-forward spaces use None.
Its leaves have the batch axis first, so it is split over devices like a batch.

Metrics: `loss` returns `aux` with float32 scalars 'loss' (the mean over the
real examples), 'count' (how many real examples or tokens the means are over)
and every name in `metric_names` (also means over the real examples, e.g.
'accuracy'). Means weighted by 'count' combine exactly over batches and
devices; `summarize` then turns combined means into reported values (a
language model adds 'perplexity' = exp(loss)).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Protocol, Tuple, runtime_checkable

import jax.numpy as jnp

from jdarts.registry import Registry

PyTree = Any
Batch = Dict[str, jnp.ndarray]

SPACES = Registry("search space")


@runtime_checkable
class SearchSpace(Protocol):
  """What every search space provides (see the module docstring for the conventions).

  Attributes:
    name: the registered name.
    metric_names: the per-example means `loss` reports in `aux` besides 'loss'
      and 'count', e.g. ('accuracy',); the loop logs them as train_<name> and
      val_<name>.
  """
  name: str
  metric_names: Tuple[str, ...]

  @classmethod
  def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
    """Raises `jdarts.config_lib.ConfigError` naming a bad key of the `model` block.

    Runs before anything is built or compiled; one line: the key, what it
    got, what would work.
    """

  @classmethod
  def from_config(cls, model_cfg: Mapping[str, Any], info: Any, *,
                  bn_axis_name: Optional[str] = None) -> "SearchSpace":
    """Builds the space from the config's `model` block.

    Args:
      model_cfg: the `model` block as a plain dict.
      info: the dataset's description (`jdarts.data.DatasetInfo` for images:
        `image_shape`, `num_classes`); the space reads what it needs.
      bn_axis_name: the device axis to average normalisation statistics over,
        or None.
    """

  def example_batch(self, batch_size: int) -> Batch:
    """A batch of zeros shaped and typed like the data the space consumes.

    Used to initialise the weights and to count parameters and operations;
    e.g. {'image': (B, H, W, C) float32, 'label': (B,) int32}.
    """

  def init(self, rng: jnp.ndarray, batch: Batch) -> PyTree:
    """Initial network weights (`params`) for inputs shaped like `batch`."""

  def init_alphas(self, rng: jnp.ndarray) -> PyTree:
    """Initial architecture parameters: a dict of named arrays."""

  def init_carry(self, batch_size: int) -> Optional[PyTree]:
    """The carry at the start of a stream of (batch_size, ...) batches; None if unused."""

  def loss(self, params: PyTree, alphas: PyTree, batch: Batch, rng: jnp.ndarray,
           carry: Optional[PyTree]) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray],
                                             Optional[PyTree]]:
    """The training loss of the supernet on `batch`: pure and differentiable.

    Args:
      params, alphas: the two pytrees.
      batch: a batch as `example_batch` describes.
      rng: a key for this call's randomness (dropout, drop-path); the same key
        gives the same function, so estimators may call it repeatedly.
      carry: from `init_carry` or the previous call on the same stream.

    Returns:
      (loss scalar, aux, new carry); aux holds 'loss', 'count' and
      `metric_names` as float32 scalars.
    """

  def summarize(self, means: Dict[str, float]) -> Dict[str, float]:
    """Reported values from count-weighted means of 'loss' and `metric_names`."""

  def derive(self, alphas: PyTree) -> Any:
    """The discrete genotype the alphas select, ranked by the space's own mixing."""

  def genotype_json(self, genotype: Any) -> Dict[str, Any]:
    """A JSON-serialisable form of a genotype (what `genotype.json` holds)."""

  def format_genotype(self, genotype: Any) -> str:
    """A one-line human-readable form of a genotype."""

  def genotype_stats(self, genotype: Any) -> Dict[str, float]:
    """Optional: numbers that describe a genotype, logged every epoch.

    E.g. {'num_skip_connect': 2, 'num_parameter_free': 3} (collapse
    diagnostics: parameter-free operations taking over a DARTS cell). The
    search loop logs them as 'arch' rows (metrics.jsonl, TensorBoard); `{}`
    (SpaceBase's default) logs nothing.
    """


class SpaceBase:
  """Defaults for the optional parts of `SearchSpace`; subclass it to write less.

  Feed-forward (no carry), no metrics besides the loss, nothing to validate,
  summaries as the means, genotypes as their own JSON and `str`.
  """
  name: str = ""
  metric_names: Tuple[str, ...] = ()
  # Optional: the `jdarts.models.MODELS` network that trains this space's
  # genotypes, as `model` block keys ({'name': 'cifar'} plus any sizes that
  # differ from jdarts.train_config's defaults); the search report counts its
  # parameters. None: no evaluation network (the report skips the count).
  eval_model: Optional[Mapping[str, Any]] = None

  @classmethod
  def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
    del model_cfg

  def init_carry(self, batch_size: int) -> Optional[PyTree]:
    del batch_size
    return None

  def summarize(self, means: Dict[str, float]) -> Dict[str, float]:
    return dict(means)

  def genotype_json(self, genotype: Any) -> Dict[str, Any]:
    return genotype

  def format_genotype(self, genotype: Any) -> str:
    return str(genotype)

  def genotype_stats(self, genotype: Any) -> Dict[str, float]:
    del genotype
    return {}


def image_example_batch(batch_size: int, image_shape) -> Batch:
  """{'image': (B, H, W, C) float32 zeros, 'label': (B,) int32 zeros}: an image space's batch."""
  return {"image": jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32),
          "label": jnp.zeros((batch_size,), jnp.int32)}


def config_get(cfg: Any, key: str, default: Any) -> Any:
  """`cfg[key]` for a dict or ConfigDict, `getattr` for other objects, else `default`."""
  if hasattr(cfg, "get"):
    return cfg.get(key, default)
  return getattr(cfg, key, default)
