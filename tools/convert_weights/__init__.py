"""torch / HF checkpoints <-> crab_jax: one mapping table per model family."""
