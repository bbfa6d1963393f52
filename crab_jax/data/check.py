"""``python -m crab_jax.data.check`` (see :mod:`crab_jax.cli.check`)."""

import sys

from crab_jax.cli.check import main

if __name__ == "__main__":
    sys.exit(main())
