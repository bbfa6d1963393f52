"""``python -m crab_jax.aot_compile``: the TPU compile check; its help is :mod:`crab_jax.training.aot`'s docstring."""

from __future__ import annotations

import ast
import json
import os
import pathlib

from absl import app, flags
from ml_collections import config_flags

from crab_jax.config.command_line import checked_command_line

# What --help prints: crab_jax.training.aot's docstring (the figures and how they are computed, in
# one place), read without importing the training stack, which main imports once the command
# line was checked (a bad one is refused in about a second).
__doc__ = ast.get_docstring(ast.parse((pathlib.Path(__file__).parent / "training" / "aot.py").read_text()))

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(REPO / "configs" / "tpu_v4.py")


def define_flags():
    """The command's flags (defined when run: importing this module must not clash with crab_jax.train's)."""
    config = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG,
        "Training config file (as for crab_jax.train), optionally FILE:VARIANT; override keys with --config.a.b=v.",
        lock_config=True)
    topology = flags.DEFINE_string("topology", "v4-8", "Cloud TPU accelerator type to compile for: v4-8, v4-32, "
                                   "v5p-8, v5e-4, v6e-8, ... (no TPU needed; libtpu must be installed).")
    as_json = flags.DEFINE_bool("json", False, "Also print every figure as one JSON object on the last line.")
    return config, topology, as_json


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs nothing; only the TPU compiler is used
    from crab_jax.training.aot import _json_safe, aot_report, format_report, parse_slice

    config = _CONFIG.value  # checked against the schema by checked_command_line
    tpu = parse_slice(_TOPOLOGY.value)
    report = aot_report(config, tpu)
    print(format_report(report))
    if _JSON.value:
        print(json.dumps(_json_safe(report)))


if __name__ == "__main__":
    parse_flags = checked_command_line(default_config=DEFAULT_CONFIG)  # before --config is defined
    _CONFIG, _TOPOLOGY, _JSON = define_flags()
    app.run(main, flags_parser=parse_flags)
