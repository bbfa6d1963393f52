"""AVE segment accuracy (spec A.6.1) over prediction lines, whatever the family's answer format:
a scorer is given how to read a line's reference and how to parse an answer into 1-s slots."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from crab_jax.data.records.crab_answers import AVE_SLOTS, ave_slots, normalise_label
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
