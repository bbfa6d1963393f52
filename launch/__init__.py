"""Launch scripts for training on Cloud TPU (see launch/README.md)."""
