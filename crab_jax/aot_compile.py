"""``python -m crab_jax.aot_compile``: the TPU compile check (:mod:`crab_jax.cli.aot_compile`)."""

from crab_jax.cli.aot_compile import run

if __name__ == "__main__":
    run()
