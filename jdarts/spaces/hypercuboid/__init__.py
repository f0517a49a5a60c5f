"""Differentiable Hyperparameter Grid Search: the HyperCuboid space (sharp_darts.txt sec. 4.1).

* `paths`: best-path derivation by dynamic programming over the HyperCuboid DAG;
* `network`: the MultiChannelNet supernet (Fig. 6), the discrete network of
  a path, and the handmade baseline path;
* `space`: `MultiChannelSpace`, registered as 'multichannel'.
"""
from jdarts.spaces.hypercuboid import network, paths
from jdarts.spaces.hypercuboid.space import MultiChannelSpace, path_network

__all__ = ["network", "paths", "MultiChannelSpace", "path_network"]
