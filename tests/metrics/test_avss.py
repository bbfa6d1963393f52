"""AVSS class-wise mIoU / F (``calc_color_miou_fscore`` + ``inference_avss``) against the original's fixture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crab_jax.data.media.decode import avss_palette, load_avss_mask
from crab_jax.metrics import masks as M
from tests.metrics.parity import SCORE_ATOL, Comparisons


def _frame(arrays, name):
    """``(logits [K, h, w], gt [h, w])`` of one fixture frame."""
    return arrays[f"{name}_pred_logits"], arrays[f"{name}_gt"]


def test_every_frame_matches_the_original(expected, arrays):
    cmp = Comparisons("avss frames")
    for frame in expected["avss"]["frames"]:
        name = frame["name"]
        logits, gt = _frame(arrays, name)
        num_classes = logits.shape[0]
        pred = M.avss_pred_classes(logits)
        cmp.exact("pred argmax", name, pred, arrays[f"{name}_pred_argmax"])
        iou, f, count, frame_miou = M.avss_frame_stats(arrays[f"{name}_pred_argmax"], gt, num_classes)
        cmp.close("iou per class", name, iou, arrays[f"{name}_iou_per_class"], SCORE_ATOL)
        cmp.close("fscore per class", name, f, arrays[f"{name}_fscore_per_class"], SCORE_ATOL)
        cmp.exact("class count", name, count, arrays[f"{name}_class_count"])
        cmp.close("frame miou", name, frame_miou, frame["vid_miou"], SCORE_ATOL)
        cmp.exact("classes counted", name, np.flatnonzero(count).tolist(), frame["classes_counted"])
        cmp.exact("classes in gt", name, np.unique(gt).tolist(), frame["classes_in_gt"])
        cmp.exact("classes predicted", name, np.unique(pred).tolist(), frame["classes_predicted"])
    cmp.finish()


def test_script_accumulation_running_and_summary(expected, arrays):
    frames = expected["avss"]["frames"]
    scores = M.AvssScores(num_classes=_frame(arrays, frames[0]["name"])[0].shape[0])
    cmp = Comparisons("avss script")
    for frame, printed in zip(frames, expected["avss"]["running_after_each_frame"], strict=True):
        logits, gt = _frame(arrays, frame["name"])
        scores.add(M.avss_pred_classes(logits), gt)
        running = scores.running()
        cmp.close("running mIoU", frame["name"], running["mIoU"], printed["batch_iou"], SCORE_ATOL)
        cmp.close("running F", frame["name"], running["F"], printed["batch_fscore"], SCORE_ATOL)
    got, ref = scores.summary(), expected["avss"]["summary"]
    assert got["frames"] == len(frames)
    for ours, theirs in (("mIoU", "miou"), ("mIoU_noBg", "miou_noBg"), ("F", "f_score"), ("F_noBg", "f_score_noBg")):
        cmp.close(f"summary {ours}", "all frames", got[ours], ref[theirs], SCORE_ATOL)
    cmp.finish()


def test_batched_call_equals_the_sum_of_frames(expected, arrays):
    frames = expected["avss"]["frames"]
    num_classes = _frame(arrays, frames[0]["name"])[0].shape[0]
    sums = [np.zeros(num_classes, np.float32) for _ in range(3)]
    cmp = Comparisons("avss batched")
    for frame, vid_miou in zip(frames, expected["avss"]["batched_call_vid_miou"], strict=True):
        logits, gt = _frame(arrays, frame["name"])
        *stats, frame_miou = M.avss_frame_stats(M.avss_pred_classes(logits), gt, num_classes)
        sums = [s + x for s, x in zip(sums, stats)]
        cmp.close("batched vid miou", frame["name"], frame_miou, vid_miou, SCORE_ATOL)
    cmp.close("batched iou sum", "all", sums[0], arrays["avss_batched_iou_sum_per_class"], SCORE_ATOL)
    cmp.close("batched fscore sum", "all", sums[1], arrays["avss_batched_fscore_sum_per_class"], SCORE_ATOL)
    cmp.exact("batched class count", "all", sums[2], arrays["avss_batched_class_count"])
    cmp.finish()


def _nearest(ids: np.ndarray, size: int) -> np.ndarray:
    """PIL NEAREST resize of an id map to ``size x size`` (what load_avss_mask does to the colours)."""
    return np.asarray(Image.fromarray(ids.astype(np.uint8)).resize((size, size), Image.NEAREST))


def test_pngs_on_disk_map_back_through_the_palette(expected, arrays, metrics_dir):
    cmp = Comparisons("avss pngs")
    for frame in expected["avss"]["frames"]:
        name = frame["name"]
        logits, gt = _frame(arrays, name)
        num_classes = logits.shape[0]
        argmax = arrays[f"{name}_pred_argmax"]
        size = max(gt.shape)  # load_avss_mask makes square maps; the identity for a square map
        gt_path, pred_path = (metrics_dir / "inputs" / f"{name}_{kind}.png" for kind in ("gt", "pred"))
        cmp.exact("gt png indices", name, np.asarray(Image.open(gt_path)), gt)
        cmp.exact("gt png -> load_avss_mask", name, load_avss_mask(gt_path, size, num_classes)[0], _nearest(gt, size))
        rgb = np.asarray(Image.open(pred_path).convert("RGB"))
        cmp.exact("pred png = palette[argmax]", name, rgb, avss_palette(num_classes)[argmax])
        cmp.exact("pred png -> load_avss_mask", name, load_avss_mask(pred_path, size, num_classes)[0],
                  _nearest(argmax, size))
    cmp.finish()


def test_class_count_comes_from_the_argument():
    """K = 4 by hand; a ground-truth id outside [0, K) (255, an ignore label) is not counted."""
    pred = np.array([[0, 1, 3], [1, 2, 0]])
    gt = np.array([[0, 1, 255], [2, 2, 0]])
    iou, f, count, frame_miou = M.avss_frame_stats(pred, gt, num_classes=4)
    # class 0: inter 2, pred 2, gt 2; class 1: inter 1, pred 2, gt 1; class 2: inter 1, pred 1, gt 2;
    # class 3: predicted once, never annotated.
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(f, [1.0, 1.3 * 0.5 / (0.3 * 0.5 + 1), 1.3 * 0.5 / (0.3 + 0.5), 0.0], atol=1e-7)
    assert count.tolist() == [1, 1, 1, 1]
    assert frame_miou == pytest.approx(2.0 / 3, abs=1e-7)

    scores = M.AvssScores(num_classes=5)
    scores.add(pred, gt)
    scores.add(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64))  # background only: IoU 1
    assert scores.running()["mIoU"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4, abs=1e-7)
    summary = scores.summary()
    assert summary["mIoU"] == pytest.approx(2.0 / 5, abs=1e-7)  # class 4 never seen: divisor is still K
    assert summary["mIoU_noBg"] == pytest.approx(2.0 / 4, abs=1e-7)  # drops the last class, keeps class 0
    assert summary["frames"] == 2


def test_ties_pick_the_first_class_and_bad_ids_raise():
    logits = np.zeros((6, 2, 2), np.float32)
    logits[4, 0, 0] = 1.0
    assert M.avss_pred_classes(logits).tolist() == [[4, 0], [0, 0]]
    with pytest.raises(ValueError, match=r"predicted class ids must lie in \[0, 3\)"):
        M.avss_frame_stats(np.array([[3]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="one shape"):
        M.avss_frame_stats(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match=r"\[K, H, W\]"):
        M.avss_pred_classes(np.zeros((2, 2)))
