"""Checks a run config against the declared keys (:mod:`crab_jax.config.schema`) before anything runs."""

from __future__ import annotations

from typing import Mapping

from crab_jax.config import schema


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
    """Raises ``ValueError`` naming every key not declared in ``reference`` (or missing from ``config``)."""
    unknown, missing = unknown_and_missing(config, reference)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown key(s) {unknown}")
        if missing:
            parts.append(f"missing key(s) {missing}")
        raise ValueError(f"{source}: " + "; ".join(parts) + " (every key is declared in crab_jax/config/schema.py)")


def check_against_schema(config, *, source: str = "--config") -> None:
    """:func:`check_config` of an ml_collections config against :mod:`crab_jax.config.schema`'s keys."""
    check_config(config.to_dict(), schema.get_config().to_dict(), source=source)
