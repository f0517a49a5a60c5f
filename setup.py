"""Installs jdarts: differentiable architecture search in JAX/Flax."""
import setuptools

setuptools.setup(
    name="jdarts",
    version="0.1.0",
    description=("Purely functional JAX/Flax differentiable architecture search: "
                 "DARTS, exact hypergradients, Single-DARTS, sharpDARTS."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["jdarts", "jdarts.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.3",
        "chex>=0.1.87",
        "tensorflow-datasets>=4.9.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=0.1.1",
        "grain>=0.2.6",
        "numpy>=1.26",
        "absl-py>=2.0",
        "scikit-learn>=1.3",  # ships the offline quickstart dataset (8x8 digits)
        "pillow>=9",  # ImageNet: JPEG decoding (tfds.data_source) and augmentation
        "tqdm>=4.60",
        "tensorboard>=2.12",  # event files (pure-Python writer; no TensorFlow needed)
    ],
    extras_require={
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],  # NVIDIA driver >= 580 (the H200 measured in RESULTS.md)
        "tpu": ["jax[tpu]"],
        "viz": ["matplotlib>=3.7"],
        "test": ["pytest>=7", "pytest-xdist>=3", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["jdarts=jdarts.cli:entry"]},
)
