"""Config files and ``KEY=VALUE`` overrides -> one validated run config.

A config file is a Python file with ``get_config()`` or ``get_config(variant)`` (the
``configs/*.py`` files, or a user's own), named as ``FILE`` or ``FILE:VARIANT``. The trainer
reads it through absl's ``config_flags`` (``--config FILE --config.a.b=v``); every other
command (inference, data preparation) calls :func:`load_config`, which applies the same
overrides and runs the same schema check once. Every problem is a :class:`ConfigError` whose
message is one line naming the file or key (commands print it and exit with status 2).
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import traceback
from typing import Sequence

import ml_collections

from crab_jax.config.check import ConfigError, check_against_schema, unknown_key_message

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def missing_file_message(spec: str, path: pathlib.Path) -> str:
    """``--config X: no such config file ...``, with the repository's config files as the fix."""
    known = sorted(p.name for p in REPO_CONFIGS.glob("*.py")) if REPO_CONFIGS.is_dir() else []
    where = f"; the repository's are {', '.join('configs/' + n for n in known)}" if known else ""
    return f"--config {spec}: no such config file {str(path)!r} (cwd {pathlib.Path.cwd()}){where}"


def _raised_in(path: pathlib.Path, error: BaseException) -> str:
    """``path:line`` of the deepest frame of ``error``'s traceback inside the config file, else ``path``."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if pathlib.Path(f.filename) == path.resolve()]
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{path}:{error.lineno}"
    return f"{path}:{frames[-1].lineno}" if frames else str(path)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``path/to/config.py[:variant]`` -> that file's ``get_config([variant])``; :class:`ConfigError`
    for a missing file, one without ``get_config`` or one that raises while loading."""
    file_name, _, variant = str(spec).partition(":")
    path = pathlib.Path(file_name)
    if not path.is_file():
        raise ConfigError(missing_file_message(spec, path))
    try:
        module_spec = importlib.util.spec_from_file_location(f"_crab_jax_config_{path.stem}", path.resolve())
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"--config {spec}: {path} defines no get_config() function")
        return module.get_config(variant) if variant else module.get_config()
    except ConfigError:
        raise
    except Exception as e:  # the user's Python: one line naming where it failed, not a traceback
        call = f"get_config({variant!r})" if variant else "get_config()"
        raise ConfigError(f"--config {spec}: loading it ({call}) failed at {_raised_in(path, e)}: "
                          f"{type(e).__name__}: {e}".replace("\n", " ")) from e


def parse_value(text: str):
    """A Python literal (``3``, ``(1, 2)``, ``True``, ``'x'``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override_key_error(config: ml_collections.ConfigDict, key: str) -> str | None:
    """Why ``key`` (``section.key``) cannot be overridden in ``config`` (with the closest known keys),
    or None when it names a key or section of it."""
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return unknown_key_message(key, config.to_dict())
        node = node[part]
    return None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Sets each ``section.key=value`` of ``overrides``; an undeclared key or a value of the wrong type
    is a :class:`ConfigError` naming it."""
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"config override {item!r}: expected KEY=VALUE (e.g. data.seq_len=64)")
        problem = override_key_error(config, key)
        if problem:
            raise ConfigError(f"config override {item!r}: {problem}")
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        old = node[last]
        try:
            node[last] = parse_value(text)
        except TypeError:  # a locked ConfigDict keeps each field's type
            raise ConfigError(f"config override {item!r}: {key} expects type {type(old).__name__} "
                              f"(now {old!r}), not {text!r}") from None
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """:func:`load_config_file` + :func:`apply_overrides` + the schema check."""
    config = apply_overrides(load_config_file(spec), overrides)
    check_against_schema(config, source=f"--config {spec}")
    return config
