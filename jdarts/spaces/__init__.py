"""Search spaces, chosen by name from `SPACES`.

A search space is an object built from a config (`SPACES.get(name)(config)`)
that exposes pure functions over two separate pytrees, `params` and `alphas`:

* `init(rng, batch) -> params`
* `init_alphas(rng) -> alphas`            (a dict of named arrays)
* `apply(params, alphas, batch) -> logits`
* `loss(params, alphas, batch) -> (loss, aux)`  (aux: 'loss', 'accuracy', ...)
* `derive(alphas) -> genotype` and `genotype_json(genotype) -> dict`

Nothing in a space owns or mutates `alphas`; search networks hold no state.
New spaces (recurrent, NAS-Bench-201, sharpDARTS, HyperCuboid) register here.
"""
from jdarts.registry import Registry

SPACES = Registry("search space")


def get_space(name: str, config):
  """Builds the search space registered as `name` from its config."""
  # Imports register the built-in spaces lazily, keeping `import jdarts` light.
  from jdarts.spaces import darts_cnn  # noqa: F401
  return SPACES.get(name)(config)
