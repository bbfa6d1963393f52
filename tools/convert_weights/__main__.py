"""``python -m tools.convert_weights --help``: see :mod:`crab_jax.cli.convert_weights.cli`."""

import sys

from crab_jax.cli.convert_weights.cli import main

sys.exit(main())
