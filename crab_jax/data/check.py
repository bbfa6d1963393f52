"""``python -m crab_jax.data.check``: what a data root holds (:mod:`crab_jax.data.prepared.check`)."""

import sys

from crab_jax.data.prepared.check import main

if __name__ == "__main__":
    sys.exit(main())
