"""Scoring predictions files with a family's task scorers, and the tables ``evaluate`` prints.

A family gives one scorer per task (``Family.task_scorers``: task -> ``(ctx) -> TaskScorer``,
the protocol in :mod:`crab_jax.metrics.tables`). :func:`score_files` reads each file
(:mod:`crab_jax.evaluation.predictions`), hands every usable line to its task's scorer with a
:class:`Context` (paths, the skipping switch), and collects the lines it could not use with their line
numbers; :func:`format_report` / :func:`report_json` render the result.

Which task a line belongs to: its ``task`` field (crab_jax's lines), else the one task asked
for (the original's files hold one task and do not name it). Lines of tasks not asked for
are ignored and counted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Mapping, Sequence

from crab_jax.evaluation.predictions import missing_fields, read_predictions
from crab_jax.families.base import Family
from crab_jax.metrics.tables import TaskTable, UnusableRow

# The smallest tail of an absolute path that is looked up under the search roots (one
# component, a bare "0.png", would match any file of that name).
_MIN_SUFFIX = 2


@dataclasses.dataclass(frozen=True)
class Context:
    """The :class:`~crab_jax.metrics.tables.ScoringContext` of one predictions file."""

    data_root: str
    search_roots: tuple[str, ...]
    predictions_file: str
    skip_unparsable: bool

    def locate(self, path: str, what: str) -> str:
        """An existing file for ``path``: as given (absolute), under each search root (relative),
        then its last components under each root, longest first (the original stores absolute
        paths of its authors' machines)."""
        p = str(path)
        parts = [x for x in p.replace("\\", "/").split("/") if x not in ("", ".")]
        candidates = [p] if os.path.isabs(p) else [os.path.join(r, p) for r in self.search_roots]
        for k in range(len(parts) - 1, _MIN_SUFFIX - 1, -1):
            candidates += [os.path.join(r, *parts[-k:]) for r in self.search_roots]
        for c in candidates:
            if os.path.isfile(c):
                return c
        raise UnusableRow(f"{what} {p!r} not found (looked under {', '.join(self.search_roots)})")


@dataclasses.dataclass
class Report:
    """The tables of the tasks asked for and what could not be used.

    unusable: ``(file, line, reason)`` of every line not scored (bad JSON, missing fields,
      unreadable reference); each task's table also lists its own.
    ignored: lines of tasks that were not asked for.
    """

    tables: list[TaskTable]
    unusable: list[tuple[str, int, str]]
    ignored: int
    files: list[str]

    @property
    def scored(self) -> int:
        return sum(t.scored for t in self.tables)


def _task_of(row: dict, tasks: Sequence[str]) -> tuple[str | None, str | None]:
    """``(task, None)``, ``(None, None)`` for a task not asked for, or ``(None, reason)``."""
    task = row.get("task")
    if task is None:
        if len(tasks) == 1:
            return tasks[0], None
        return None, "no 'task' field (the original's files hold one task: give that one --task)"
    return (str(task), None) if str(task) in tasks else (None, None)


def tasks_in_files(files: Sequence[str]) -> list[str]:
    """The tasks the lines of ``files`` name (their ``task`` field), in order of first appearance."""
    seen: dict[str, None] = {}
    for path in files:
        for line in read_predictions(path).rows:
            if line.row.get("task") is not None:
                seen.setdefault(str(line.row["task"]), None)
    return list(seen)


def score_files(family: Family, tasks: Sequence[str], files: Sequence[str], *, data_root: str | None = None,
                skip_unparsable: bool = False) -> Report:
    """Scores every line of ``files`` for ``tasks`` with the family's scorers.

    Args:
      tasks: tasks to score (each a key of ``family.task_scorers``).
      data_root: folder of the relative paths in the lines (GT masks ...); each file's own folder
        is searched after it (and is the only one when None).
      skip_unparsable: leave unparsable predictions out (the original's rule for frames without
        a mask) instead of scoring them as wrong.
    Raises:
      ValueError: a task the family has no scorer for. FileNotFoundError: a missing file.
    """
    unknown = [t for t in tasks if t not in family.task_scorers]
    if unknown:
        raise ValueError(f"no scorer for task(s) {unknown} in family {family.name!r}; "
                         f"known: {sorted(family.task_scorers)}")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"predictions file {f} not found")
    first = Context(data_root or "", (), "", skip_unparsable)
    scorers = {t: family.task_scorers[t](first) for t in tasks}
    per_task: dict[str, list] = {t: [] for t in tasks}
    unusable, ignored = [], 0
    for path in files:
        roots = tuple(dict.fromkeys(r for r in (data_root, os.path.dirname(os.path.abspath(path))) if r))
        ctx = Context(roots[0], roots, path, skip_unparsable)
        read = read_predictions(path)
        unusable += [(path, n, reason) for n, reason in read.bad]
        for line in read.rows:
            task, reason = _task_of(line.row, tasks)
            if task is None:
                if reason:
                    unusable.append((path, line.line, reason))
                else:
                    ignored += 1
                continue
            scorer = scorers[task]
            reason = missing_fields(line.row, scorer.required_fields)
            if reason is None:
                try:
                    scorer.add(line.row, ctx)
                except UnusableRow as e:
                    reason = str(e)
            if reason is not None:
                unusable.append((path, line.line, reason))
                per_task[task].append((path, line.line, reason))
    tables = [dataclasses.replace(scorers[t].table(), unusable=tuple(per_task[t])) for t in tasks]
    return Report(tables, unusable, ignored, list(files))


# ----------------------------------------------------------------------------- rendering


def _value(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4f}"


def line_numbers(entries: Sequence[tuple[str, int, str]], limit: int = 20) -> str:
    """``"a.jsonl: 3, 7, 9; b.jsonl: 2"`` (at most ``limit`` numbers per file, then "...")."""
    by_file: dict[str, list[int]] = {}
    for f, n, _ in entries:
        by_file.setdefault(f, []).append(n)
    parts = []
    for f, ns in by_file.items():
        shown = ", ".join(str(n) for n in ns[:limit]) + (", ..." if len(ns) > limit else "")
        parts.append(f"{os.path.basename(f)}: {shown}")
    return "; ".join(parts)


def format_table(table: TaskTable) -> str:
    """One task's table: ``metric  value  n`` rows, then the line counts."""
    width = max([len("metric")] + [len(m.name) for m in table.metrics])
    out = [f"== {table.task}", f"{'metric':<{width}}  {'value':>8}  {'n':>6}"]
    out += [f"{m.name:<{width}}  {_value(m.value):>8}  {m.n:>6}" for m in table.metrics]
    if not table.metrics:
        out.append("(nothing scored)")
    counts = f"{table.scored} lines scored, {table.unparsable} unparsable"
    counts += f" ({table.skipped} skipped)" if table.skipped else (" (scored as wrong)" if table.unparsable else "")
    if table.unusable:
        counts += f", {len(table.unusable)} unusable"
    out.append(counts)
    out += [f"note: {n}" for n in table.notes]
    return "\n".join(out)


def metric_key(task: str, name: str) -> str:
    """``"s4", "J (mIoU)"`` -> ``"s4/J_mIoU"`` (a scalar name for metric writers and headlines)."""
    return f"{task}/" + re.sub(r"[^\w@.\-/]+", "_", name).strip("_")


def summary_rows(report: Report, headline: Mapping[str, Sequence[str]]) -> list[tuple[str, str, float, int]]:
    """The paper's summary: per task ``(task, metric, value, n)`` of its headline metric (the first
    of ``headline[task]`` the table has, by :func:`metric_key` name; else the table's first row)."""
    out = []
    for table in report.tables:
        rows = [m for m in table.metrics if m.value is not None]
        if not rows:
            continue
        named = {metric_key(table.task, m.name).split("/", 1)[1]: m for m in rows}
        pick = next((named[k] for k in headline.get(table.task, ()) if k in named), rows[0])
        out.append((table.task, pick.name, pick.value, pick.n))
    return out


def format_summary(rows: Sequence[tuple[str, str, float, int]]) -> str:
    if not rows:
        return "== summary\n(nothing scored)"
    width = max(len(t) for t, *_ in rows)
    metric = max(len(m) for _, m, *_ in rows)
    out = ["== summary (one number per task)"]
    out += [f"{t:<{width}}  {m:<{metric}}  {_value(v):>8}  {n:>6}" for t, m, v, n in rows]
    return "\n".join(out)


def format_report(report: Report, headline: Mapping[str, Sequence[str]] | None = None) -> str:
    """Every table, the summary (with ``headline``: the family's metric per task), then the
    unusable lines (numbers and the first reasons) and the ignored count."""
    tail = []
    if report.unusable:
        tail.append(f"{len(report.unusable)} lines unusable (line numbers {line_numbers(report.unusable)})")
        tail += [f"  {os.path.basename(f)}:{n}: {reason}" for f, n, reason in report.unusable[:10]]
        if len(report.unusable) > 10:
            tail.append(f"  ... and {len(report.unusable) - 10} more (all of them in --json)")
    if report.ignored:
        tail.append(f"{report.ignored} lines of other tasks ignored")
    summary = [format_summary(summary_rows(report, headline))] if headline is not None else []
    return "\n\n".join([format_table(t) for t in report.tables] + summary + (["\n".join(tail)] if tail else []))


def report_json(report: Report) -> dict:
    """The report as JSON-serialisable data (NaN written as null)."""
    def num(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    return {
        "files": report.files,
        "tasks": {t.task: {"metrics": [{"name": m.name, "value": num(m.value), "n": m.n} for m in t.metrics],
                           "scored": t.scored, "unparsable": t.unparsable, "skipped": t.skipped,
                           "unusable": [{"file": f, "line": n, "reason": r} for f, n, r in t.unusable],
                           "notes": list(t.notes)}
                  for t in report.tables},
        "unusable": [{"file": f, "line": n, "reason": r} for f, n, r in report.unusable],
        "ignored": report.ignored,
    }
