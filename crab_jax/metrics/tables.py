"""What a task scorer returns and what it is given: the protocol between the scorers of a
family (task -> :class:`TaskScorer`) and the code that feeds them prediction lines
(``python -m crab_jax.evaluate``: :mod:`crab_jax.evaluation.scoring`; training's held-out
evaluation: :mod:`crab_jax.evaluation.generation`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

from crab_jax.data.errors import BadRecordError


class UnusableRow(ValueError):
    """A predictions line a task scorer cannot use: a field it needs is missing or its reference
    (record field, GT mask file) cannot be read. The message names the field / file. Such a
    line is reported by line number and not scored (a *prediction* that cannot be parsed is
    no such case: it is scored as wrong and counted unparsable)."""


@dataclasses.dataclass(frozen=True)
class MetricRow:
    """One line of a task's table: ``value`` of ``name`` over ``n`` samples (frames, videos ...)."""

    name: str
    value: float
    n: int


@dataclasses.dataclass(frozen=True)
class TaskTable:
    """A task's scores over the usable lines of its prediction files.

    scored: lines that entered the metrics (unparsable ones included unless skipped).
    unparsable: lines whose prediction could not be parsed (or has no mask, or an ``error``);
      scored as wrong, or left out when ``skipped``.
    skipped: unparsable lines left out (the original's rule, ``--skip-unparsable``).
    unusable: ``(file, line number, reason)`` of lines that could not be used at all (filled in
      by the reader, :mod:`crab_jax.evaluation.scoring`).
    notes: remarks to print under the table (e.g. class names the parser did not know).
    """

    task: str
    metrics: tuple[MetricRow, ...]
    scored: int
    unparsable: int
    skipped: int = 0
    unusable: tuple[tuple[str, int, str], ...] = ()
    notes: tuple[str, ...] = ()


class ScoringContext(Protocol):
    """What a task scorer is given (built by :mod:`crab_jax.evaluation.scoring`).

    data_root: folder the rows' relative paths (GT masks, predicted masks) are read from.
    search_roots: folders tried in turn for a relative path (``data_root``, then the
      predictions file's folder).
    predictions_file: the file the current line comes from (the original's Ref-AVS files say
      their split only in their folder name).
    skip_unparsable: leave unparsable predictions out instead of scoring them as wrong.
    locate: ``(path, what) -> existing file``: an absolute path as is, a relative one under
      ``search_roots``; raises :class:`UnusableRow` naming ``what`` and the path.
    """

    data_root: str
    search_roots: tuple[str, ...]
    predictions_file: str
    skip_unparsable: bool

    def locate(self, path: str, what: str) -> str: ...


class TaskScorer(Protocol):
    """Scores one task's prediction lines (one object per task and run of ``evaluate``).

    name: the task.
    required_fields: groups of keys; a line must hold at least one key of each group (the reader
      reports lines that do not, without calling :meth:`add`).
    add: scores one line (a dict) or raises :class:`UnusableRow`.
    table: the task's :class:`TaskTable` so far.
    """

    name: str
    required_fields: tuple[tuple[str, ...], ...]

    def add(self, row: Mapping[str, Any], ctx: ScoringContext) -> None: ...

    def table(self) -> TaskTable: ...


# ----------------------------------------------------------------------------- helpers for scorers


class LineCounts:
    """The scored / unparsable / skipped counts every task scorer keeps (a base class: a scorer
    calls :meth:`count` once per line and builds its table with :meth:`make_table`)."""

    def __init__(self, name: str):
        self.name = name
        self.scored = self.unparsable = self.skipped = 0

    def count(self, parsed: bool, ctx: ScoringContext) -> bool:
        """Counts one line; False when it is unparsable and skipped (do not score it)."""
        if not parsed:
            self.unparsable += 1
            if ctx.skip_unparsable:
                self.skipped += 1
                return False
        self.scored += 1
        return True

    def make_table(self, metrics, notes=()) -> TaskTable:
        return TaskTable(self.name, tuple(metrics), self.scored, self.unparsable, self.skipped, notes=tuple(notes))


def prediction_text(row: Mapping[str, Any]) -> str | None:
    """The generated text ``predict``, or None for a line whose media failed (``error``).

    Raises:
      UnusableRow: neither ``error`` nor ``predict``.
    """
    if row.get("error"):
        return None
    text = row.get("predict")
    if text is None:
        raise UnusableRow("no 'predict' (the generated text)")
    return str(text)


def read_reference(ctx: ScoringContext, path: str, what: str, load: Callable[[str], Any]) -> Any:
    """``load(file)`` of the file ``ctx.locate`` finds for ``path``; a missing or unreadable file
    raises :class:`UnusableRow` naming ``what`` and the file."""
    found = ctx.locate(path, what)
    try:
        return load(found)
    except (BadRecordError, OSError, ValueError) as e:
        raise UnusableRow(f"cannot read {what} {found}: {e}") from None
