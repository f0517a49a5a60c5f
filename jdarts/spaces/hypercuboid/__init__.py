"""Differentiable Hyperparameter Grid Search: the HyperCuboid space (sharp_darts.txt sec. 4.1).

* `paths`: best-path derivation by dynamic programming over the HyperCuboid DAG.
"""
