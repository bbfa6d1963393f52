"""Binary mask metrics (S4 / MS3 / Ref-AVS) against the original's metric fixture, every case."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crab_jax.data.media.decode import load_binary_mask, opencv_nearest_indices
from crab_jax.metrics import masks as M
from tests.metrics.parity import SCORE_ATOL, Comparisons


def _case_arrays(arrays, name):
    return arrays[f"{name}_pred_logits"], arrays[f"{name}_gt"]


def test_thresholds_are_bit_equal_to_torch_linspace(arrays):
    ref = arrays["fmeasure_thresholds"]
    assert M.FMEASURE_THRESHOLDS.dtype == np.float32 and M.FMEASURE_THRESHOLDS.shape == ref.shape
    assert np.array_equal(M.FMEASURE_THRESHOLDS.view(np.uint32), ref.astype(np.float32).view(np.uint32))


def test_linspace_formula_matches_torch_elsewhere():
    torch = pytest.importorskip("torch")
    for start, end, steps in [(0.0, 1 - 1e-10, 255), (0.0, 1.0, 101), (-3.0, 7.5, 64), (0.1, 0.9, 17), (2.0, 1.0, 9)]:
        ref = torch.linspace(start, end, steps, dtype=torch.float32).numpy()
        got = M._torch_linspace_float32(start, end, steps)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (start, end, steps)


def test_every_binary_case_matches_the_original(expected, arrays):
    cmp = Comparisons("binary")
    for case in expected["binary"]["cases"]:
        name = case["name"]
        logits, gt = _case_arrays(arrays, name)
        cmp.exact("pixel counts", name, [int(gt.sum()), gt.size, int(M.binarize(logits).sum())],
                  [case["gt_pixels"], case["pixels"], case["pred_pixels_above_0_5"]])
        cmp.exact("saved png", name, M.binarize(logits) * 255, arrays[f"{name}_pred_saved_png"])
        for shape_name, lg, g in (("[1,H,W]", logits[None], gt[None]), ("[H,W]", logits, gt)):
            cmp.close("mask_iou", f"{name} {shape_name}", M.mask_iou(lg, g), case["mask_iou"], SCORE_ATOL)
            cmp.close("eval_fmeasure", f"{name} {shape_name}", M.eval_fmeasure(lg, g), case["eval_fmeasure"],
                      SCORE_ATOL)
        cmp.close("fmeasure_curve", name, M.fmeasure_curve(logits, gt), arrays[f"{name}_fmeasure_curve"], SCORE_ATOL)
        cmp.close("null_s", name, M.null_s(logits[None]), case["metric_s_for_null"], SCORE_ATOL)
        png_over_255 = arrays[f"{name}_pred_saved_png"] / 255.0
        cmp.close("mask_iou(png/255)", name, M.mask_iou(png_over_255, gt), case["mask_iou_of_saved_png_over_255"],
                  SCORE_ATOL)
        cmp.close("eval_fmeasure(png/255)", name, M.eval_fmeasure(png_over_255, gt),
                  case["eval_fmeasure_of_saved_png_over_255"], SCORE_ATOL)
    cmp.finish()


def test_batched_call_convention(expected, arrays):
    names = [c["name"] for c in expected["binary"]["cases"]]
    logits = np.stack([arrays[f"{n}_pred_logits"] for n in names])
    gt = np.stack([arrays[f"{n}_gt"] for n in names])
    ref = expected["binary"]["batched_call"]
    assert ref["n"] == len(names) and ref["n_with_object"] == int((gt.sum(axis=(1, 2)) > 0).sum())
    cmp = Comparisons("binary batched")
    cmp.close("mask_iou", "batch", M.mask_iou(logits, gt), ref["mask_iou"], SCORE_ATOL)
    cmp.close("eval_fmeasure", "batch", M.eval_fmeasure(logits, gt), ref["eval_fmeasure"], SCORE_ATOL)
    cmp.finish()


def test_script_summary_accumulators(expected, arrays):
    scores, null = M.BinaryMaskScores(), M.NullScores()
    for case in expected["binary"]["cases"]:
        logits, gt = _case_arrays(arrays, case["name"])
        iou, f = scores.add(logits[None], gt[None])
        assert (iou, f) == (M.mask_iou(logits, gt), M.eval_fmeasure(logits, gt))
        null.add(logits)
    ref = expected["binary"]["script_summary"]
    got, got_null = scores.summary(), null.summary()
    assert got["frames"] == got_null["frames"] == ref["count"]
    cmp = Comparisons("binary script summary")
    cmp.close("J", "all frames", got["J"], ref["miou"], SCORE_ATOL)
    cmp.close("F", "all frames", got["F"], ref["f_score"], SCORE_ATOL)
    cmp.close("null S", "all frames", got_null["S"], ref["ref_avs_null_ms"], SCORE_ATOL)
    cmp.finish()


def test_pngs_on_disk_read_back_as_the_arrays(expected, arrays, metrics_dir):
    """The user's files: gt read as the dataset does (colour -> grey -> > 0, OpenCV-nearest resize),
    the saved 0/255 prediction PNG, and its scores when passed as png / 255."""
    cmp = Comparisons("binary pngs")
    for case in expected["binary"]["cases"]:
        name = case["name"]
        gt = arrays[f"{name}_gt"]
        h, w = gt.shape
        size = max(h, w)  # load_binary_mask makes square maps; for a square map this is the identity
        want = gt[opencv_nearest_indices(h, size)][:, opencv_nearest_indices(w, size)]
        read = load_binary_mask(metrics_dir / "inputs" / f"{name}_gt.png", size)
        cmp.exact("gt png -> load_binary_mask", name, read[0].astype(np.uint8), want)
        pred_png = np.asarray(Image.open(metrics_dir / "inputs" / f"{name}_pred.png").convert("L"))
        cmp.exact("pred png", name, pred_png, arrays[f"{name}_pred_saved_png"])
        cmp.close("mask_iou(disk png/255)", name, M.mask_iou(pred_png / 255.0, gt),
                  case["mask_iou_of_saved_png_over_255"], SCORE_ATOL)
        cmp.close("eval_fmeasure(disk png/255)", name, M.eval_fmeasure(pred_png / 255.0, gt),
                  case["eval_fmeasure_of_saved_png_over_255"], SCORE_ATOL)
    cmp.finish()


def test_empty_ground_truth_rules():
    logits = np.full((2, 4, 5), -3.0, np.float32)
    logits[0, :2] = 3.0  # 10 of 20 pixels predicted
    gt = np.zeros((2, 4, 5), np.float32)
    # image 0: true negatives 10 / 20; image 1: 20 / 20; batch mean 0.75
    assert M.mask_iou(logits, gt) == pytest.approx(0.75, abs=1e-6)
    assert M.eval_fmeasure(logits, gt) == 0.0
    assert not M.fmeasure_curve(logits[0], gt[0]).any()
    assert M.null_s(logits[0]) == pytest.approx(np.sqrt(0.5), abs=1e-6)
    scores = M.BinaryMaskScores()
    scores.add(logits[0], gt[0])
    assert scores.summary() == {"J": pytest.approx(0.5, abs=1e-6), "F": 0.0, "frames": 1}


def test_bad_inputs_raise_clear_errors():
    logits = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="0/255 PNG must be divided by 255"):
        M.mask_iou(logits, np.full((4, 4), 255, np.uint8))
    with pytest.raises(ValueError, match="gt shape"):
        M.eval_fmeasure(logits, np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        M.mask_iou(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="one frame per call"):
        M.BinaryMaskScores().add(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    assert M.NullScores().summary()["frames"] == 0


# ----------------------------------------------------------------------------- Crab+ (SAM2 stage, B.6)


def test_binary_jf_by_hand():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), np.uint8)
    pred[0, :3] = True  # 3 predicted
    gt[0, 1:4] = 255  # 4 annotated (0/255 as the PNGs hold them), 2 of them predicted
    gt[1, 0] = 255
    j, f = M.binary_jf(pred, gt)
    assert j == pytest.approx(2 / 5)
    p, r = 2 / 3, 2 / 4
    assert f == pytest.approx(1.3 * p * r / (0.3 * p + r))


def test_binary_jf_empty_conventions():
    empty, obj = np.zeros((3, 3), bool), np.eye(3, dtype=bool)
    assert M.binary_jf(empty, empty) == (1.0, 1.0)  # union empty: J 1; P = R = 1
    assert M.binary_jf(empty, obj) == (0.0, 0.0)  # P 1 (nothing predicted), R 0 -> F 0
    assert M.binary_jf(obj, empty) == (0.0, 0.0)  # P 0, R 1 (nothing to find) -> F 0
    assert M.binary_jf(obj, ~obj) == (0.0, 0.0)  # P + R = 0
    with pytest.raises(ValueError, match="one shape"):
        M.binary_jf(empty, np.zeros((3, 4)))


def test_null_s_over_background_differs_from_crab():
    pred = np.zeros((4, 4), np.uint8)
    pred[0] = 1  # 4 of 16 pixels
    assert M.null_s_over_background(pred) == pytest.approx(np.sqrt(4 / 12))
    assert M.null_s(np.where(pred > 0, 10.0, -10.0)) == pytest.approx(np.sqrt(4 / 16), abs=1e-6)
    assert M.null_s_over_background(np.zeros((4, 4))) == 0.0
    assert M.null_s_over_background(np.ones((4, 4))) == float("inf")


def test_crab_plus_accumulators():
    jf = M.BinaryJFScores()
    empty, obj = np.zeros((2, 2), bool), np.ones((2, 2), bool)
    assert jf.add(obj, obj) == (1.0, 1.0)
    jf.add_scores(0.0, 0.0)
    assert jf.summary() == {"J": 0.5, "F": 0.5, "frames": 2}
    null = M.BackgroundNullScores()
    null.add(empty)
    null.add(np.array([[1, 0], [0, 0]]))  # sqrt(1/3)
    assert null.add(obj) == float("inf")
    s = null.summary()
    assert s["S"] == pytest.approx(np.sqrt(1 / 3) / 2) and (s["frames"], s["infinite"]) == (2, 1)
    assert np.isnan(M.BackgroundNullScores().summary()["S"])
