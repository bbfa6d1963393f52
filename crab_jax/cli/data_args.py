"""What the data commands (``python -m crab_jax.data.prepare`` / ``check``) share: the run config
and the data root they read, with the same flags and the same error."""

from __future__ import annotations

import argparse
import sys

from crab_jax import families
from crab_jax.config.check import ConfigError
from crab_jax.config.loader import load_config
from crab_jax.config.sections import RunConfig
from crab_jax.families.base import Family


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """``--config FILE[:VARIANT]``, ``--data-root DIR`` and ``--quiet``."""
    p.add_argument("--config", required=True, help="run config file, optionally with a variant: configs/gpu.py:finetune")
    p.add_argument("--data-root", default="", help="override data.path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_run(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, RunConfig, Family, str]:
    """The parsed flags, the typed run config, its family and the data root (``--data-root`` or
    ``data.path``); exits with status 2, saying why in one line, when the config cannot be loaded or
    there is no root."""
    args = parser.parse_args(argv)
    try:
        run = RunConfig.from_config(load_config(args.config))
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    root = args.data_root or run.data.path
    if not root:
        print("error: no data root: set data.path in the config or pass --data-root", file=sys.stderr)
        raise SystemExit(2)
    return args, run, families.get(run.model.family), root
