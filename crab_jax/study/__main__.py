"""``python -m crab_jax.study {transfer,routes} ...`` (see :mod:`crab_jax.cli.study`)."""

import sys

from crab_jax.cli.study import main

if __name__ == "__main__":
    sys.exit(main())
