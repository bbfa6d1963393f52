"""Checks a run config against the declared keys (:mod:`crab_jax.config.schema`) before anything runs."""

from __future__ import annotations

import difflib
from typing import Mapping

from crab_jax.config import schema


class ConfigError(ValueError):
    """A config file, override or key the run cannot use; its message is one line naming the key or file."""


def dotted_keys(config: Mapping, prefix: str = "") -> list[str]:
    """Every key of a nested mapping as ``section.key``, sections included (``train``, ``train.num_steps``)."""
    out = []
    for k, v in config.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, Mapping):
            out += dotted_keys(v, f"{prefix}{k}.")
    return out


def _section(config: Mapping, dotted: str) -> Mapping | None:
    """The nested mapping at ``dotted`` (``""``: ``config`` itself), or None when there is none."""
    node = config
    for part in dotted.split(".") if dotted else ():
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def closest_keys(key: str, config: Mapping, n: int = 3) -> list[str]:
    """The declared keys whose names look most like ``key`` (a typo's likely intent); may be empty.

    In an existing section only its own keys are compared (by leaf name), so ``train.nonexistent``
    is not matched to another section's key; a misspelt section compares whole dotted names."""
    section, _, leaf = key.rpartition(".")
    node = _section(config, section)
    if node is not None:
        close = difflib.get_close_matches(leaf, [str(k) for k in node], n=n, cutoff=0.6)
        return [f"{section}.{k}" if section else k for k in close]
    return difflib.get_close_matches(key, dotted_keys(config), n=n, cutoff=0.6)


def unknown_key_message(key: str, config: Mapping) -> str:
    """``unknown config key 'a.b'; did you mean a.c?`` or, with nothing close, the keys of its section
    (``config``: the declared keys, as a mapping)."""
    close = closest_keys(key, config)
    section = key.rpartition(".")[0]
    names = sorted(_section(config, section) or ())
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    elif names:
        hint = f"; the keys of {section or 'the config'} are: " + ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    else:
        hint = ""
    return f"unknown config key {key!r}{hint} (every key is declared in crab_jax/config/schema.py)"


def unknown_and_missing(config: Mapping, reference: Mapping, prefix: str = "") -> tuple[list[str], list[str]]:
    unknown, missing = [], []
    for k in config:
        name = f"{prefix}{k}"
        if k not in reference:
            unknown.append(name)
        elif isinstance(reference[k], Mapping):
            if not isinstance(config[k], Mapping):
                unknown.append(f"{name} (expected a section)")
                continue
            u, m = unknown_and_missing(config[k], reference[k], name + ".")
            unknown += u
            missing += m
    missing += [f"{prefix}{k}" for k in reference if k not in config]
    return unknown, missing


def check_config(config: Mapping, reference: Mapping, *, source: str = "config") -> None:
    """Raises :class:`ConfigError` (a ``ValueError``) naming every key not declared in ``reference``
    (with the closest declared names) or missing from ``config``."""
    unknown, missing = unknown_and_missing(config, reference)
    if unknown or missing:
        parts = []
        if unknown:
            hints = {k: closest_keys(k, reference, n=1) for k in unknown}
            guesses = ", ".join(f"{k} -> {h[0]}" for k, h in hints.items() if h)
            parts.append(f"unknown key(s) {unknown}" + (f" (closest: {guesses})" if guesses else ""))
        if missing:
            parts.append(f"missing key(s) {missing}")
        raise ConfigError(f"{source}: " + "; ".join(parts) + " (every key is declared in crab_jax/config/schema.py)")


def check_against_schema(config, *, source: str = "--config") -> None:
    """:func:`check_config` of an ml_collections config against :mod:`crab_jax.config.schema`'s keys."""
    check_config(config.to_dict(), schema.get_config().to_dict(), source=source)
