"""Scores of model outputs on the synthetic dataset and the chance levels they must beat."""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.data.synthetic import generate as gen
from crab_jax.data.records import crab_answers as A
from crab_jax.data.synthetic import metrics as sm


def test_metric_parsers_and_kernels():
    assert A.parse_answer("<s> x <answer>A</answer> so <answer> Left  Side </answer>.</s>") == "left side"
    assert A.parse_answer("no tag") is None
    assert A.parse_event("<event> Red Circle </event> <range> 2, 7 </range>") == ("red circle", (2, 7))
    assert A.parse_box("top left corner is (1,2) and bottom right corner is (30,40)") == (1, 2, 30, 40)
    assert A.parse_box("[3,4,50,60] and [1,1]") == (3, 4, 50, 60)
    assert sm.box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert sm.box_iou((0, 0, 9, 9), (0, 0, 19, 9)) == pytest.approx(0.5)
    assert sm.box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0
    gt = np.zeros((4, 4), bool)
    gt[:2] = True
    assert sm.mask_iou(gt, gt) == pytest.approx(1.0)
    assert sm.mask_iou(np.ones((4, 4)), gt) == pytest.approx(0.5)
    assert sm.mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == pytest.approx(1.0)  # empty GT: TN ratio
    row = {"event": "red circle", "start_time": 2, "end_time": 6}
    assert sm.score("ave", "<event> red circle </event> <range> 2,6 </range>", row) == 1.0
    assert sm.score("ave", "<event> red circle </event> <range> 2,4 </range>", row) == pytest.approx(0.8)
    assert sm.score("ave", "<event> cyan ring </event> <range> 2,6 </range>", row) == pytest.approx(0.6)
    assert sm.score("ave", "garbage", row) == pytest.approx(0.6)  # all background
    assert sm.score("avqa", "So the answer is <answer> Two </answer>.", {"answer": "two"}) == 1.0
    assert sm.score("avqa", "two", {"answer": "two"}) == 0.0
    box = {"top_left": [0, 0], "bottom_right": [9, 9]}
    assert sm.score("arig", "<obj>(0,0)(9,9)</obj>", box) == 1.0
    assert sm.score("arig", "no box", box) == 0.0
    with pytest.raises(ValueError, match="gt_mask"):
        sm.score("s4", "text", {})
    with pytest.raises(KeyError, match="answer"):
        sm.score("avqa", "<answer> x </answer>", {"question": "q"})
    with pytest.raises(ValueError, match="unknown task"):
        sm.score("avvp", "x", {})


def test_chance_levels_are_media_blind_baselines(dataset):
    levels = {t: sm.chance_level(t) for t in sm.TASKS}
    assert 0.3 < levels["avqa"] < 0.5        # per-question majority over 2-6 balanced answers
    assert 0.4 < levels["ave"] < 0.6         # background-heavy slots
    assert levels["s4_category"] < 0.25      # 6 balanced classes
    assert levels["s4"] < 0.3 and levels["arig"] < 0.3
    # on records: the best constant answer, never better than what it was measured on
    rows = gen.load_records(dataset, "avqa", "test")
    best = sm.chance_level("avqa", rows)
    majority = {}
    for r in rows:
        majority.setdefault(r["question"], []).append(r["answer"])
    assert best == pytest.approx(sum(max(v.count(a) for a in v) for v in majority.values()) / len(rows))
    s = sm.summary("arig", [0.6, 0.2])
    assert s["ciou@0.5"] == 0.5 and s["mean"] == pytest.approx(0.4) and s["chance"] == levels["arig"]
