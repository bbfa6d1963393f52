"""``python -m tools.convert_weights --help``: see :mod:`tools.convert_weights.cli`."""

import sys

from tools.convert_weights.cli import main

sys.exit(main())
