"""Classification metrics on small hand-computed cases (and against sklearn when installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crab_jax.metrics import classification as C

# 2 classes of unequal size: "a" x4 (3 right), "b" x2 (1 right); one "b" predicted as "a",
# one "a" unparsable (None).
PRED = ["a", "a", "a", None, "b", "a"]
GT = ["a", "a", "a", "a", "b", "b"]


def test_accuracy_counts_none_as_wrong():
    assert C.accuracy(PRED, GT) == pytest.approx(4 / 6)


def test_uar_weighs_classes_equally():
    assert C.per_class_recall(PRED, GT) == {"a": pytest.approx(3 / 4), "b": pytest.approx(1 / 2)}
    assert C.unweighted_average_recall(PRED, GT) == pytest.approx((3 / 4 + 1 / 2) / 2)
    # Only classes present in the GT count: a class only predicted adds no recall term.
    assert C.unweighted_average_recall(["z", "b"], ["a", "b"]) == pytest.approx(0.5)


def test_weighted_f1_by_hand():
    # a: TP 3, FP 1 (the b predicted a), FN 1 (None) -> F1 6/8; b: TP 1, FP 0, FN 1 -> 2/3.
    expected = (4 * (6 / 8) + 2 * (2 / 3)) / 6
    assert C.weighted_f1(PRED, GT) == pytest.approx(expected)
    # A class never predicted scores F1 0 (sklearn's zero_division=0).
    assert C.weighted_f1(["a", "a"], ["a", "b"]) == pytest.approx(0.5 * (2 / 3))


def test_weighted_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = ["joy", "anger", "sadness", "neutral", "fear"]
    for _ in range(20):
        n = int(rng.integers(1, 40))
        gt = [labels[i] for i in rng.integers(0, 4, n)]
        pred = [labels[i] if i < 5 else "<none>" for i in rng.integers(0, 6, n)]
        ref = metrics.f1_score(gt, pred, average="weighted", zero_division=0)
        assert C.weighted_f1(pred, gt) == pytest.approx(ref, abs=1e-12)
        assert C.unweighted_average_recall(pred, gt) == pytest.approx(
            metrics.recall_score(gt, pred, labels=sorted(set(gt)), average="macro", zero_division=0), abs=1e-12)


def test_empty_and_bad_input():
    assert math.isnan(C.accuracy([], [])) and math.isnan(C.weighted_f1([], []))
    assert math.isnan(C.unweighted_average_recall([], []))
    with pytest.raises(ValueError, match="2 predictions but 1"):
        C.accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="ground-truth label is None"):
        C.accuracy(["a"], [None])


def test_grouped_accuracy_rows():
    correct = {("Audio", "Counting"): [1, 0], ("Audio", "Comparative"): [1],
               ("Audio-Visual", "Temporal"): [0, 0, 1], ("Other", "Kind"): [1]}
    rows = {name: (value, n) for name, value, n in C.grouped_accuracy(correct)}
    assert rows["accuracy"] == (pytest.approx(4 / 7), 7)
    assert rows["Audio/Counting"] == (0.5, 2) and rows["Audio/avg"] == (pytest.approx(2 / 3), 3)
    assert rows["Audio-Visual/Temporal"] == (pytest.approx(1 / 3), 3)
    assert rows["Other/Kind"] == (1.0, 1) and "Visual/avg" not in rows
    names = [name for name, _, _ in C.grouped_accuracy(correct)]
    assert names.index("Audio/avg") < names.index("Audio-Visual/Temporal") < names.index("Other/Kind")
