"""The event-task scorers over prediction lines, whatever the family's answer format: AVE
segment accuracy (spec A.6.1) and AVVP segment / event level F (A.6.2). A scorer is given how
to read a line's reference and how to parse an answer (the family's parsers)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from crab_jax.data.records.crab_answers import AVE_SLOTS, AvvpParse, ave_slots, normalise_label
from crab_jax.metrics.avvp import AvvpScores
from crab_jax.metrics.tables import LineCounts, MetricRow, ScoringContext, prediction_text


class AveSegmentScorer(LineCounts):
    """Equal slots over 10 x videos; an unparsable answer is all background.

    Args:
      name: the task.
      reference: ``line -> (event, start, end)`` (raises UnusableRow when it has none).
      parse: ``answer text -> [10] slot labels`` or None when unparsable.
      required_fields: the line keys the reader checks first.
    """

    def __init__(self, name: str, reference: Callable[[Mapping[str, Any]], tuple[str, int, int]],
                 parse: Callable[[str], Sequence[str | None] | None], required_fields):
        super().__init__(name)
        self.reference, self.parse, self.required_fields = reference, parse, required_fields
        self.equal = self.slots = 0

    def add(self, row: Mapping[str, Any], ctx: ScoringContext) -> None:
        event, start, end = self.reference(row)
        text = prediction_text(row)
        pred = None if text is None else self.parse(text)
        if not self.count(pred is not None, ctx):
            return
        gt = ave_slots(normalise_label(event), (start, end))
        pred = pred if pred is not None else [None] * len(gt)
        self.equal += sum(p == g for p, g in zip(pred, gt))
        self.slots += len(gt)

    def table(self):
        accuracy = self.equal / self.slots if self.slots else float("nan")
        return self.make_table([MetricRow("segment accuracy", accuracy, self.slots // AVE_SLOTS)])


class AvvpEventScorer(LineCounts):
    """LLP segment- and event-level F (:class:`~crab_jax.metrics.avvp.AvvpScores`); an answer with
    no event section scores empty matrices; classes outside the LLP list are left out and noted.

    Args:
      name: the task.
      reference: ``line -> AvvpParse`` of the GT (raises UnusableRow when it has none).
      parse: ``answer text -> AvvpParse`` (``found`` False: unparsable).
      required_fields: the line keys the reader checks first.
    """

    def __init__(self, name: str, reference: Callable[[Mapping[str, Any]], AvvpParse],
                 parse: Callable[[str], AvvpParse], required_fields):
        super().__init__(name)
        self.reference, self.parse, self.required_fields = reference, parse, required_fields
        self.scores = AvvpScores()
        self.unknown: dict[str, int] = {}

    def add(self, row: Mapping[str, Any], ctx: ScoringContext) -> None:
        gt = self.reference(row)
        text = prediction_text(row)
        pred = None if text is None else self.parse(text)
        for name in (pred.unknown if pred is not None else ()):
            self.unknown[name] = self.unknown.get(name, 0) + 1
        parsed = pred is not None and pred.found
        if not self.count(parsed, ctx):
            return
        if not parsed:
            zeros = np.zeros_like(gt.audio)
            pred = AvvpParse(zeros, zeros, False, ())
        self.scores.add(pred.audio, pred.visual, gt.audio, gt.visual)

    def table(self):
        notes = []
        if self.unknown:
            listed = ", ".join(f"{k!r} x{v}" for k, v in sorted(self.unknown.items()))
            notes.append(f"event classes outside the LLP list (left out of the predictions): {listed}")
        return self.make_table([MetricRow(*r) for r in self.scores.paper_rows()], notes)
