"""Reading predictions files: crab_jax's ``preds.jsonl`` and the original's ``infer_results.jsonl``
/ ``inference_results.jsonl`` alike (one JSON object per line).

:func:`read_predictions` never stops at a bad line: it returns the usable lines and, for every
other one, its line number and why (not JSON, not an object, a field missing). Blank lines are
ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class PredictionLine:
    """One usable line: its file, 1-based line number and the parsed object."""

    file: str
    line: int
    row: dict[str, Any]


@dataclasses.dataclass
class ReadPredictions:
    """The usable lines of one file and ``(line number, reason)`` of the others."""

    rows: list[PredictionLine]
    bad: list[tuple[int, str]]


def missing_fields(row: dict, required: Sequence[Sequence[str]]) -> str | None:
    """Why ``row`` lacks a required field (each group: at least one key present, not null), or None."""
    for group in required:
        if not any(row.get(k) is not None for k in group):
            if len(group) == 1:
                return f"lacks the field {group[0]!r}"
            return "lacks a field among " + ", ".join(repr(k) for k in group)
    return None


def parse_line(text: str, required: Sequence[Sequence[str]] = ()) -> tuple[dict | None, str | None]:
    """``(object, None)`` for a usable line, ``(None, reason)`` otherwise."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at column {e.colno})"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, expected an object"
    reason = missing_fields(row, required)
    return (None, reason) if reason else (row, None)


def read_predictions(path: str | os.PathLike, required: Sequence[Sequence[str]] = ()) -> ReadPredictions:
    """Every line of the predictions file ``path``.

    Args:
      required: groups of keys; a line must hold (non-null) at least one key of each group.
    Raises:
      FileNotFoundError: no such file (named in the message).
    """
    shown = os.fspath(path)
    if not os.path.isfile(shown):
        raise FileNotFoundError(f"predictions file {shown} not found")
    rows, bad = [], []
    with open(shown, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append((number, f"not UTF-8 text ({e.reason})"))
                continue
            if not text.strip():
                continue
            row, reason = parse_line(text, required)
            if reason:
                bad.append((number, reason))
            else:
                rows.append(PredictionLine(shown, number, row))
    return ReadPredictions(rows, bad)
