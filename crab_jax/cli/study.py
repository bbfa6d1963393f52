"""The ``python -m crab_jax.study`` command: one subcommand per study.

  transfer   single-task vs multi-task training per adapter variant (LoRA, I-LoRA, frozen-base
             floor) over several seeds; writes DIR/transfer.md and DIR/transfer.json.
  routes     the I-LoRA router gates of a trained model on held-out batches; heat maps, a
             task x task routing similarity and the raw arrays.

``python -m crab_jax.study SUBCOMMAND --help`` explains each one's flags.
"""

from __future__ import annotations

import sys
from typing import Sequence

SUBCOMMANDS = {
    "transfer": "crab_jax.cli.study_transfer",
    "routes": "crab_jax.cli.study_routes",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"crab_jax.study: unknown subcommand {name!r}; expected one of {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    import importlib  # the chosen subcommand's imports only (JAX, matplotlib)
    return int(importlib.import_module(SUBCOMMANDS[name]).main(rest) or 0)
