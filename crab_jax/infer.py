"""``python -m crab_jax.infer``: the generation / scoring command (:mod:`crab_jax.cli.infer`)."""

import sys

from crab_jax.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
