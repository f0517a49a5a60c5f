"""Registries by name, so configs pick operations and search spaces by string.

A registry is a plain mapping from a name to a factory. Users register their own
entries with the decorator::

    from jdarts import mixing

    @mixing.MIXINGS.register("relu_norm")
    def relu_norm(alphas):                  # (..., num_ops) -> (..., num_ops) weights
        w = jax.nn.relu(alphas)
        return w / (w.sum(-1, keepdims=True) + 1e-8)

Each search space keeps its own operation registry, with metadata, e.g.
`jdarts.spaces.darts_cnn.primitives.OPS`.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, TypeVar

T = TypeVar("T")


class Registry:
  """A named mapping from string keys to factories with helpful lookup errors."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, Callable] = {}

  def register(self, name: str, fn: Callable | None = None, *, overwrite: bool = False):
    """Registers `fn` under `name`; usable as a decorator when `fn` is omitted."""

    def _add(f):
      if name in self._entries and not overwrite:
        raise ValueError(f"{self.kind} {name!r} is already registered; "
                         "pass overwrite=True to replace it.")
      self._entries[name] = f
      return f

    return _add if fn is None else _add(fn)

  def get(self, name: str) -> Callable:
    """Returns the factory registered under `name` or raises a KeyError naming the choices."""
    try:
      return self._entries[name]
    except KeyError:
      close = difflib.get_close_matches(str(name), self._entries, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise KeyError(f"Unknown {self.kind} {name!r}.{hint} Known: "
                     f"{', '.join(sorted(self._entries))}.") from None

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def names(self):
    return list(self._entries)
