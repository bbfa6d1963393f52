"""``python -m crab_jax.data.synthetic``: write the synthetic dataset (:mod:`crab_jax.data.synthetic.generate`)."""

import sys

from crab_jax.data.synthetic.generate import main

sys.exit(main())
