"""Classification metrics of the label tasks (Crab+ spec B.7; MUSIC-AVQA groups of A.6.3).

Predictions and ground truths are equal-length sequences of hashable labels (normalised answer
strings, choice indices ...). A prediction that could not be parsed is passed as ``None``: it
equals no ground-truth label, so it is wrong everywhere (ground truths must not be ``None``).

* :func:`accuracy` (also WAR, the "weighted average recall" of DFEW / MAFW: the same number).
* :func:`unweighted_average_recall` (UAR): the mean per-class recall over the classes present in
  the ground truth, so a rare class weighs as much as a frequent one.
* :func:`weighted_f1`: sklearn's ``f1_score(average='weighted')`` (MELD): per-class F1 over the
  ground-truth classes weighted by their support; a class never predicted has F1 0 (sklearn's
  ``zero_division`` 0). Labels that only occur in the predictions have support 0 and weigh nothing.
* :func:`grouped_accuracy`: MUSIC-AVQA accuracy per question type and per modality group.

Every function returns NaN for empty input.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Mapping, Sequence

import numpy as np

# MUSIC-AVQA question groups in the paper's column order (spec A.6.3): modality -> question kinds.
MUSIC_AVQA_GROUPS = (("Audio", ("Counting", "Comparative")), ("Visual", ("Counting", "Location")),
                     ("Audio-Visual", ("Existential", "Counting", "Location", "Comparative", "Temporal")))


def _pairs(pred: Sequence[Hashable], gt: Sequence[Hashable]) -> tuple[list, list]:
    pred, gt = list(pred), list(gt)
    if len(pred) != len(gt):
        raise ValueError(f"classification: {len(pred)} predictions but {len(gt)} ground truths")
    if any(g is None for g in gt):
        raise ValueError("classification: a ground-truth label is None (None marks an unparsable prediction)")
    return pred, gt


def accuracy(pred: Sequence[Hashable], gt: Sequence[Hashable]) -> float:
    """The fraction of equal pairs (= WAR)."""
    pred, gt = _pairs(pred, gt)
    return float(np.mean([p == g for p, g in zip(pred, gt)])) if gt else float("nan")


def per_class_recall(pred: Sequence[Hashable], gt: Sequence[Hashable]) -> dict:
    """``{class: recall}`` for every class present in ``gt``."""
    pred, gt = _pairs(pred, gt)
    support = Counter(gt)
    hits = Counter(g for p, g in zip(pred, gt) if p == g)
    return {c: hits[c] / n for c, n in support.items()}


def unweighted_average_recall(pred: Sequence[Hashable], gt: Sequence[Hashable]) -> float:
    """UAR: the mean of :func:`per_class_recall` over the ground-truth classes."""
    recalls = per_class_recall(pred, gt)
    return float(np.mean(list(recalls.values()))) if recalls else float("nan")


def weighted_f1(pred: Sequence[Hashable], gt: Sequence[Hashable]) -> float:
    """``Σ_c support_c · F1_c / N`` over the ground-truth classes c, ``F1_c = 2TP / (2TP + FP + FN)``."""
    pred, gt = _pairs(pred, gt)
    if not gt:
        return float("nan")
    support = Counter(gt)
    tp = Counter(g for p, g in zip(pred, gt) if p == g)
    predicted = Counter(pred)
    total = 0.0
    for c, n in support.items():
        fp, fn = predicted[c] - tp[c], n - tp[c]
        total += n * (2 * tp[c] / (2 * tp[c] + fp + fn))
    return total / len(gt)


def grouped_accuracy(correct: Mapping[tuple[str, ...], Sequence[int]],
                     groups=MUSIC_AVQA_GROUPS) -> list[tuple[str, float, int]]:
    """MUSIC-AVQA's accuracy table from 0/1 outcomes per question type.

    Args:
      correct: ``(modality, kind) -> [0/1, ...]`` (a type is the first two names of the record's
        ``type``, e.g. ``("Audio", "Counting")``).
      groups: modality -> kinds, in the table's order.
    Returns:
      ``[(name, accuracy, n)]``: ``"accuracy"`` over everything, then ``"modality/kind"`` for each
      kind present, ``"modality/avg"`` per modality present, then types outside ``groups``
      (``"a/b"``), sorted.
    """
    every = [v for vs in correct.values() for v in vs]
    rows = [("accuracy", _mean(every), len(every))]
    known = set()
    for modality, kinds in groups:
        in_modality = [v for t, vs in correct.items() if t[:1] == (modality,) for v in vs]
        for kind in kinds:
            known.add((modality, kind))
            vs = correct.get((modality, kind), [])
            if vs:
                rows.append((f"{modality}/{kind}", _mean(vs), len(vs)))
        if in_modality:
            rows.append((f"{modality}/avg", _mean(in_modality), len(in_modality)))
    rows += [("/".join(t), _mean(vs), len(vs)) for t, vs in sorted(correct.items()) if t not in known and vs]
    return rows


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
