"""crab_jax: JAX/Flax NNX reimplementation of Crab (CVPR'25) and Crab+."""

__version__ = "0.1.0"
