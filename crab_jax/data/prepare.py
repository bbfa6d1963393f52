"""``python -m crab_jax.data.prepare`` (see :mod:`crab_jax.cli.prepare`)."""

import sys

from crab_jax.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
