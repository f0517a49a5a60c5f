"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020), as searched by Single-DARTS.

* `genotype`: the operation names, the edge order, the standard cell string
  and its parse, derivation (argmax per edge by the space's mixing, 'none'
  allowed), operation counts, loading a string / genotype.json / workdir;
* `network`: the supernet (`SearchNetwork`) and the discrete `TinyNetwork`;
* `evaluation`: registers `TinyNetwork` in `jdarts.models.MODELS` as 'nb201';
* `space`: `NB201Space`, the `SearchSpace` registered as 'nb201'.

Importing the package registers the space and the evaluation network.
"""
from jdarts.spaces.nb201 import evaluation, genotype
from jdarts.spaces.nb201.genotype import PRIMITIVES, arch_to_str, derive, load_arch, parse_arch
from jdarts.spaces.nb201.network import SearchNetwork, TinyNetwork
from jdarts.spaces.nb201.space import NB201Space

__all__ = ["evaluation", "genotype", "PRIMITIVES", "arch_to_str", "derive", "load_arch",
           "parse_arch", "SearchNetwork", "TinyNetwork", "NB201Space"]
