"""``python -m crab_jax.segment``: the SAM2 second stage over a predictions file (:mod:`crab_jax.cli.segment`)."""

import sys

from crab_jax.cli.segment import main

if __name__ == "__main__":
    sys.exit(main())
