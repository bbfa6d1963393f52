"""Checks a run config against the declared keys (``configs/base.py``) before anything runs."""

from __future__ import annotations

import pathlib
import sys
from typing import Mapping

REPO = pathlib.Path(__file__).resolve().parents[2]


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
        raise ValueError(f"{source}: " + "; ".join(parts) + " (every key is declared in configs/base.py)")


def check_against_base(config, *, source: str = "--config") -> None:
    """:func:`check_config` of an ml_collections config against ``configs/base.py``'s keys."""
    if str(REPO) not in sys.path:  # a checkout run without installing: configs/ sits beside crab_jax/
        sys.path.insert(0, str(REPO))
    from configs import base

    check_config(config.to_dict(), base.get_config().to_dict(), source=source)
