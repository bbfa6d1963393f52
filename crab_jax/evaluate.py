"""``python -m crab_jax.evaluate``: the paper's tables from predictions files (:mod:`crab_jax.cli.evaluate`)."""

import sys

from crab_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
