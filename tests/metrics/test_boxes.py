"""ARIG box kernels (``utils/ciou.py``) against the original's fixture, and the cIoU / AUC summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crab_jax.metrics import boxes as B
from tests.metrics.parity import FLOAT64_ATOL, SCORE_ATOL, Comparisons


def test_every_pair_matches_the_original(expected):
    cmp = Comparisons("boxes")
    for pair in expected["boxes"]["pairs"]:
        name, pred, gt = pair["name"], pair["pred"], pair["gt"]
        assert pair["intersection_over_union_raises"] is None
        cmp.close("intersection_over_union", name, B.intersection_over_union(pred, gt),
                  pair["intersection_over_union"], FLOAT64_ATOL)
        try:
            got, raised = B.c_iou(pred, gt), None
        except ZeroDivisionError as e:
            got, raised = None, f"ZeroDivisionError: {e}"
        cmp.exact("c_iou raises", name, str(raised), str(pair["c_iou_raises"]))
        if raised is None and pair["c_iou_raises"] is None:
            cmp.close("c_iou", name, got, pair["c_iou"], FLOAT64_ATOL)
    cmp.finish()


def test_bbox_overlaps_ciou_matches_the_original(expected, arrays):
    got = B.bbox_overlaps_ciou(arrays["boxes_pred"], arrays["boxes_gt"])
    assert got.dtype == np.float32
    pairs = expected["boxes"]["pairs"]
    from_json = [np.nan if p["bbox_overlaps_ciou_is_nan"] else p["bbox_overlaps_ciou"] for p in pairs]
    cmp = Comparisons("boxes ciou")
    cmp.close("bbox_overlaps_ciou", "npz", got, arrays["boxes_bbox_overlaps_ciou"], SCORE_ATOL)
    cmp.close("bbox_overlaps_ciou", "json", got, from_json, SCORE_ATOL)
    cmp.finish()


def test_box_inputs_agree(expected, arrays, metrics_dir):
    with open(metrics_dir / "inputs" / "boxes.json") as f:
        on_disk = json.load(f)
    pairs = expected["boxes"]["pairs"]
    assert [(p["name"], p["pred"], p["gt"]) for p in on_disk] == [(p["name"], p["pred"], p["gt"]) for p in pairs]
    np.testing.assert_array_equal(arrays["boxes_pred"], np.array([p["pred"] for p in pairs], np.float32))
    np.testing.assert_array_equal(arrays["boxes_gt"], np.array([p["gt"] for p in pairs], np.float32))


def test_summary_by_hand():
    scores = B.BoxScores()
    assert scores.add([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0, abs=1e-7)  # 1 - 1e-8
    assert scores.add([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3, abs=1e-7)  # 50 / 150
    assert scores.add(None, [0, 0, 10, 10]) == 0.0  # unparsable
    got = scores.summary()
    assert got["n"] == 3
    assert got["mIoU"] == pytest.approx((1 + 1 / 3) / 3, abs=1e-7)
    assert got["cIoU"] == pytest.approx(1 / 3)
    # success rate: t = 0 -> 3/3; t = 0.05..0.30 (6 thresholds) -> 2/3; t = 0.35..0.95 (13) -> 1/3;
    # t = 1.0 -> 0 (IoU 1 - 1e-8 < 1). Trapezoids of width 0.05 between neighbours:
    auc = 0.05 * ((1 + 2 / 3) / 2 + 5 * (2 / 3) + (2 / 3 + 1 / 3) / 2 + 12 * (1 / 3) + (1 / 3 + 0) / 2)
    assert got["AUC"] == pytest.approx(auc, abs=1e-12)


def test_empty_summary_and_bad_boxes():
    assert B.BoxScores().summary()["n"] == 0
    assert np.isnan(B.BoxScores().summary()["AUC"])
    with pytest.raises(ValueError, match="xmin, ymin, xmax, ymax"):
        B.intersection_over_union([0, 0, 1], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="aligned pairs"):
        B.bbox_overlaps_ciou(np.zeros((2, 4)), np.zeros((3, 4)))
