"""Held-out scoring against the records, with the same task scorers as ``python -m crab_jax.evaluate``.

On AV-UIE test records the reference is the record (its JSON fields and GT mask files), not
an answer text: each generated row becomes the predictions line ``infer`` would write
(``family.prediction_metadata(record)`` + ``family.predictions``: the text as the original
decodes it, the mask arrays in memory instead of files) and goes to its task's scorer
(``family.task_scorers``). Metrics are the scorers' tables (mIoU, F-measure, AVSS class-wise
means ... are not means of per-sample values), flattened to ``{"task/metric": {mean, n}}``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
import numpy as np

from crab_jax.evaluation.prediction_lines import prediction_line, record_metadata
from crab_jax.evaluation.scoring import Context, metric_key
from crab_jax.families.base import Family
from crab_jax.metrics.tables import UnusableRow

log = logging.getLogger("crab_jax.evaluation")


class RecordScorer:
    """Accumulates generated rows of record batches into the family's per-task scorers."""

    def __init__(self, family: Family, records: Sequence[Any], data_root: str, tokenizer):
        if family.prediction_metadata is None or family.predictions is None or not family.task_scorers:
            raise ValueError(f"family {family.name!r} has no record scorers (prediction_metadata, predictions, "
                             "task_scorers)")
        self.family, self.records, self.tokenizer = family, records, tokenizer
        # GT files under the dataset root; predictions are in memory (never located).
        self.ctx = Context(str(data_root), (str(data_root),), "", skip_unparsable=False)
        self.scorers: dict[str, Any] = {}
        self.unusable: list[tuple[str, str]] = []

    def _scorer(self, task: str):
        if task not in self.scorers:
            if task not in self.family.task_scorers:
                raise ValueError(f"no scorer for task {task!r}; known: {sorted(self.family.task_scorers)}")
            self.scorers[task] = self.family.task_scorers[task](self.ctx)
        return self.scorers[task]

    def add(self, generation, record_indices: Sequence[int]) -> list[dict]:
        """Scores the rows of ``generation`` whose record index is ``>= 0`` (fillers are -1);
        returns their lines (without mask arrays)."""
        rows = [i for i, r in enumerate(record_indices) if int(r) >= 0]
        if not rows:
            return []
        sub = jax.tree.map(lambda a: np.asarray(a)[rows], generation)
        records = [self.records[int(record_indices[i])] for i in rows]
        lines = []
        for record, pred in zip(records, self.family.predictions(sub, records, self.tokenizer)):
            line = prediction_line(record_metadata(self.family, record), pred)
            try:
                self._scorer(record.task).add({**line, "pred_mask_logits": pred.mask_logits,
                                               "pred_mask_classes": pred.mask_classes}, self.ctx)
            except UnusableRow as e:
                self.unusable.append((record.source, str(e)))
                log.warning("held-out %s: not scored: %s", record.source, e)
            lines.append(line)
        return lines

    def results(self) -> dict[str, dict]:
        """``{"task/metric": {"mean", "n"}}`` plus ``task/unparsable`` (the fraction of scored
        lines whose answer could not be parsed, counted as wrong)."""
        out = {}
        for task, scorer in sorted(self.scorers.items()):
            table = scorer.table()
            for row in table.metrics:
                if row.value is not None:
                    out[metric_key(task, row.name)] = {"mean": float(row.value), "n": int(row.n)}
            if table.scored:
                out[f"{task}/unparsable"] = {"mean": table.unparsable / table.scored, "n": int(table.scored)}
        return out
