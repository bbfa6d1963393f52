"""AVVP segment- and event-level F and the benchmark summary against the original's fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crab_jax.metrics import avvp as V
from tests.metrics.parity import FLOAT64_ATOL, Comparisons

# The order of the four values both kernels return, as expected.json names them.
RETURNED = ("audio", "visual", "event_combined", "audio_visual")
SIX = ("pred_audio", "pred_visual", "pred_av", "gt_audio", "gt_visual", "gt_av")


def _six(arrays, name):
    return [arrays[f"{name}_{k}"] for k in SIX]


def test_every_case_matches_the_original(expected, arrays):
    cmp = Comparisons("avvp")
    for case in expected["avvp"]["cases"]:
        name = case["name"]
        mats = _six(arrays, name)
        cmp.exact("av = audio * visual", name, [mats[2], mats[5]], [mats[0] * mats[1], mats[3] * mats[4]])
        for level, kernel in (("segment_level", V.segment_level), ("event_level", V.event_level)):
            got = kernel(*mats)
            cmp.close(level, name, got, [case[level][k] for k in RETURNED], FLOAT64_ATOL)
    cmp.finish()


def test_summary_over_videos(expected, arrays):
    scores = V.AvvpScores()
    cmp = Comparisons("avvp summary")
    for case in expected["avvp"]["cases"]:
        a_p, v_p, _, a_g, v_g, _ = _six(arrays, case["name"])
        per_video = scores.add(a_p, v_p, a_g, v_g)
        for level in ("segment_level", "event_level"):
            cmp.close(f"add {level}", case["name"], per_video[level], [case[level][k] for k in RETURNED],
                      FLOAT64_ATOL)
    got, ref = scores.summary(), expected["avvp"]["summary_over_cases"]
    assert got["videos"] == len(expected["avvp"]["cases"])
    for level in ("segment_level", "event_level"):
        for key in ("audio", "visual", "audio_visual", "type_at_av", "event_at_av"):
            cmp.close(f"{level} {key}", "all videos", got[level][key], ref[level][key], FLOAT64_ATOL)
    cmp.finish()


def test_label_matrices_json_equals_the_arrays(expected, arrays, metrics_dir):
    with open(metrics_dir / "inputs" / "avvp_label_matrices.json") as f:
        matrices = json.load(f)
    cmp = Comparisons("avvp inputs")
    for case in expected["avvp"]["cases"]:
        for key in ("pred_audio", "pred_visual", "gt_audio", "gt_visual"):
            cmp.exact("json matrices", f"{case['name']} {key}", np.array(matrices[case["name"]][key], np.int8),
                      arrays[f"{case['name']}_{key}"])
    cmp.finish()


def _rows(*rows: str) -> np.ndarray:
    return np.array([[int(c) for c in r] for r in rows], np.int8)


def test_sizes_come_from_the_arrays():
    """3 classes x 7 segments by hand (the original hard-codes 25 x 10 in event_level)."""
    so_a = _rows("1110000", "0000011", "1111011")
    gt_a = _rows("0111000", "0000001", "1111111")
    zero = np.zeros_like(so_a)
    # segments: class 0 TP 2 FP 1 FN 1 -> 4/6; class 1 TP 1 FP 1 -> 2/3; class 2 TP 6 FN 1 -> 12/13
    seg_a = (4 / 6 + 2 / 3 + 12 / 13) / 3
    # events: class 0 [0,3) vs [1,4): 2 >= 0.5 * 4 -> TP; class 1 [5,7) vs [6,7): 1 >= 1 -> TP;
    # class 2 [0,4) matches [0,7) (4 >= 3.5), [5,7) does not (2 < 3.5) -> TP 1 FP 1; the annotation
    # is matched -> FN 0
    ev_a = (1 + 1 + 2 / 3) / 3
    for kernel, f_a in ((V.segment_level, seg_a), (V.event_level, ev_a)):
        got = kernel(so_a, zero, zero, gt_a, zero, zero)
        # no visual class active: 1.0 ("all true negatives"); pooled = audio alone here
        assert got == pytest.approx((f_a, 1.0, f_a, 1.0), abs=1e-12)


def test_empty_and_bad_inputs():
    assert V.AvvpScores().summary()["videos"] == 0
    assert np.isnan(V.AvvpScores().summary()["event_level"]["type_at_av"])
    with pytest.raises(ValueError, match="0/1 entries"):
        V.segment_level(*([np.full((2, 3), 2)] * 6))
    with pytest.raises(ValueError, match="share one shape"):
        V.event_level(*([np.zeros((2, 3))] * 5 + [np.zeros((2, 4))]))
    assert V.extract_events(np.array([1, 1, 0, 1, 0, 0, 1])) == [(0, 2), (3, 4), (6, 7)]
