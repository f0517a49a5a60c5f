"""jdarts: purely functional differentiable architecture search in JAX/Flax.

Architecture parameters (`alphas`) and network weights (`params`) are separate
pytrees; every search model is `apply(params, alphas, batch) -> (loss, aux)`.
"""
__version__ = "0.1.0"
