"""Config files and ``KEY=VALUE`` overrides -> one validated run config.

A config file is a Python file with ``get_config()`` or ``get_config(variant)`` (the
``configs/*.py`` files, or a user's own), named as ``FILE`` or ``FILE:VARIANT``. The trainer
reads it through absl's ``config_flags`` (``--config FILE --config.a.b=v``); every other
command (inference, data preparation) calls :func:`load_config`, which applies the same
overrides and runs the same schema check once.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Sequence

import ml_collections

from crab_jax.config.check import check_against_schema


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``path/to/config.py[:variant]`` -> that file's ``get_config([variant])``."""
    file_name, _, variant = str(spec).partition(":")
    path = pathlib.Path(file_name)
    if not path.is_file():
        raise FileNotFoundError(f"--config {spec}: no such config file {str(path)!r}")
    module_spec = importlib.util.spec_from_file_location(f"_crab_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"--config {spec}: {path} defines no get_config() function")
    return module.get_config(variant) if variant else module.get_config()


def parse_value(text: str):
    """A Python literal (``3``, ``(1, 2)``, ``True``, ``'x'``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Sets each ``section.key=value`` of ``overrides``; an undeclared key is an error naming it."""
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"config override {item!r}: expected KEY=VALUE (e.g. data.seq_len=64)")
        node = config
        *parents, last = key.split(".")
        for part in parents:
            if part not in node:
                raise KeyError(f"config override {item!r}: the config has no section {part!r}")
            node = node[part]
        if last not in node:
            raise KeyError(f"config override {item!r}: the config has no key {key!r} "
                           "(every key is declared in crab_jax/config/schema.py)")
        node[last] = parse_value(text)
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """:func:`load_config_file` + :func:`apply_overrides` + the schema check."""
    config = apply_overrides(load_config_file(spec), overrides)
    check_against_schema(config, source=f"--config {spec}")
    return config
