"""``python -m crab_jax.data.prepare``: AV-UIE -> ArrayRecord (:mod:`crab_jax.data.prepared.prepare`)."""

import sys

from crab_jax.data.prepared.prepare import main

if __name__ == "__main__":
    sys.exit(main())
