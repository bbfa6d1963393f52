"""Crab's nine task scorers (spec A.6): one object per task, fed predictions lines one by one.

Every scorer follows :class:`~crab_jax.metrics.tables.TaskScorer`. A line's reference comes from
its record fields (:mod:`crab_jax.families.crab.references`) and, for segmentation, from the GT
mask file; the prediction from ``predict`` (text) or the mask files. A prediction that cannot be
parsed, a segmentation line without a mask, or a line with an ``error`` (its media failed at
inference) is *unparsable*: it is scored as wrong and counted, or left out with
``ctx.skip_unparsable`` (the original's scripts skip frames without a mask). The numeric kernels
are :mod:`crab_jax.metrics`'s.

All values are fractions in [0, 1] (the paper prints them x100), except the caption metrics
(CIDEr may exceed 1) and Ref-AVS null S (lower is better).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np
from PIL import Image

from crab_jax.data.media.decode import AVSS_NUM_CLASSES, load_avss_mask, load_binary_mask
from crab_jax.data.records import crab_answers as A
from crab_jax.data.records.crab import QA_TASKS
from crab_jax.families.crab import references as R
from crab_jax.metrics import boxes, captions, classification, masks
from crab_jax.metrics.event_scorers import AveSegmentScorer, AvvpEventScorer
from crab_jax.metrics.tables import LineCounts as _Counts
from crab_jax.metrics.tables import MetricRow, ScoringContext, UnusableRow, prediction_text
from crab_jax.metrics.tables import read_reference as _open

TEXT_FIELDS = (("predict", "error"), ("reference", "output"))
# Logit magnitude of a mask that is wrong at every pixel (what a missing mask is scored as).
_WRONG_LOGIT = 1e4


# ----------------------------------------------------------------------------- text tasks


class AvqaScorer(_Counts):
    """Accuracy of the last ``<answer>`` against ``answer``, overall and per question type."""

    required_fields = TEXT_FIELDS

    def __init__(self, ctx: ScoringContext, name: str = "avqa"):
        super().__init__(name)
        self.correct: dict[tuple[str, ...], list[int]] = {}

    def add(self, row, ctx):
        answer, types = R.avqa_reference(row)
        text = prediction_text(row)
        pred = None if text is None else A.parse_answer(text)
        if self.count(pred is not None, ctx):
            self.correct.setdefault(types[:2], []).append(int(pred == answer))

    def table(self):
        return self.make_table([MetricRow(*r) for r in classification.grouped_accuracy(self.correct)])


class AveScorer(AveSegmentScorer):
    """Segment accuracy: equal slots over 10 x videos (unparsable: all background)."""

    def __init__(self, ctx: ScoringContext, name: str = "ave"):
        super().__init__(name, reference=R.ave_reference, parse=A.parse_ave, required_fields=TEXT_FIELDS)


class AvvpScorer(AvvpEventScorer):
    """LLP segment- and event-level F (audio, visual, audio-visual, Type@AV, Event@AV)."""

    def __init__(self, ctx: ScoringContext, name: str = "avvp"):
        super().__init__(name, reference=R.avvp_reference, parse=A.parse_avvp, required_fields=TEXT_FIELDS)


class ArigScorer(_Counts):
    """Box IoU (mIoU), cIoU (IoU >= 0.5) and AUC against ``top_left, bottom_right`` (unparsable: IoU 0)."""

    required_fields = TEXT_FIELDS

    def __init__(self, ctx: ScoringContext, name: str = "arig"):
        super().__init__(name)
        self.scores = boxes.BoxScores()

    def add(self, row, ctx):
        gt = R.arig_reference(row)
        text = prediction_text(row)
        box = None if text is None else A.parse_box(text)
        if self.count(box is not None, ctx):
            self.scores.add(box, gt)

    def table(self):
        s = self.scores.summary()
        return self.make_table([MetricRow(k, float(s[k]), int(s["n"])) for k in ("mIoU", "cIoU", "AUC")])


class CaptionScorer(_Counts):
    """BLEU@4, METEOR, ROUGE-L, CIDEr against ``desc`` (unparsable: an empty caption)."""

    required_fields = TEXT_FIELDS

    def __init__(self, ctx: ScoringContext, name: str = "avcap"):
        super().__init__(name)
        self.predictions: dict[str, str] = {}
        self.references: dict[str, list[str]] = {}
        self._ids = itertools.count()

    def add(self, row, ctx):
        refs = R.caption_reference(row)
        text = prediction_text(row)
        caption = "" if text is None else A.clean_output(text)
        if not self.count(bool(caption.strip()), ctx):
            return
        key = str(next(self._ids))
        self.predictions[key], self.references[key] = caption, refs

    def table(self):
        if not self.predictions:
            return self.make_table([])
        scores = captions.caption_scores(self.predictions, self.references)
        n = len(self.predictions)
        rows = [MetricRow(k, float(v), n) for k, v in scores.items()
                if k in captions.METRIC_NAMES and v is not None]
        notes = [f"captions tokenised by {scores['tokenizer']}"] if scores.get("tokenizer") else []
        if scores.get("METEOR", 0) is None:
            notes.append("METEOR not computed: it runs pycocoevalcap's Java jar (needs `java` on PATH)")
        return self.make_table(rows, notes)


# ----------------------------------------------------------------------------- masks


def predicted_logits(row: Mapping[str, Any], ctx: ScoringContext) -> np.ndarray | None:
    """``[H, W]`` float32 logits of a binary prediction: ``pred_mask_logits`` (an array, training's
    held-out evaluation), ``pred_logits_path`` (.npy), else the 0/255 PNG ``pred_mask_path`` /
    ``pred_path`` divided by 255 (the original's convention); None when the line has no mask."""
    if row.get("error"):
        return None
    if row.get("pred_mask_logits") is not None:
        return np.asarray(row["pred_mask_logits"], np.float32)
    if row.get("pred_logits_path"):
        arr = _open(ctx, str(row["pred_logits_path"]), "predicted logits", np.load)
        arr = np.asarray(arr, np.float32)
        return arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr
    for key in ("pred_mask_path", "pred_path"):
        if row.get(key):
            return _open(ctx, str(row[key]), "predicted mask", lambda p: load_binary_mask(p)[0])
    return None


def _wrong_logits(gt: np.ndarray) -> np.ndarray:
    """Logits wrong at every pixel of ``gt`` (a missing mask scores 0 IoU, 0 F and null S 1)."""
    return np.where(gt > 0, -_WRONG_LOGIT, _WRONG_LOGIT).astype(np.float32)


class BinaryMaskScorer(_Counts):
    """J (mask IoU) and F (max F-measure over 255 thresholds) per frame, averaged over frames."""

    required_fields = ()

    def __init__(self, ctx: ScoringContext, name: str):
        super().__init__(name)
        self.scores = masks.BinaryMaskScores()

    def frame(self, row, ctx) -> tuple[np.ndarray | None, np.ndarray]:
        gt = _open(ctx, R.gt_mask_path(row, self.name), "GT mask", lambda p: load_binary_mask(p)[0])
        logits = predicted_logits(row, ctx)
        if logits is not None and logits.shape != gt.shape:
            raise UnusableRow(f"predicted mask {logits.shape} and GT mask {gt.shape} differ in size")
        return logits, gt

    def add(self, row, ctx):
        logits, gt = self.frame(row, ctx)
        if self.count(logits is not None, ctx):
            self.scores.add(logits if logits is not None else _wrong_logits(gt), gt)

    def table(self):
        s = self.scores.summary()
        return self.make_table([MetricRow("J (mIoU)", float(s["J"]), int(s["frames"])),
                            MetricRow("F", float(s["F"]), int(s["frames"]))])


class RefAvsScorer(BinaryMaskScorer):
    """J and F on the seen (``test_s``) and unseen (``test_u``) splits, null S on ``test_n``."""

    def __init__(self, ctx: ScoringContext, name: str = "ref-avs"):
        _Counts.__init__(self, name)
        self.splits = {"test_s": masks.BinaryMaskScores(), "test_u": masks.BinaryMaskScores(),
                       "test_n": masks.NullScores()}

    def add(self, row, ctx):
        split = R.ref_avs_split(row, ctx.predictions_file)
        if split == "test_n":  # the null split needs no GT (it is empty): only the prediction
            logits = predicted_logits(row, ctx)
            if self.count(logits is not None, ctx):
                if logits is None:
                    gt = _open(ctx, R.gt_mask_path(row, self.name), "GT mask", lambda p: load_binary_mask(p)[0])
                    logits = _wrong_logits(np.zeros_like(gt))
                self.splits[split].add(logits)
            return
        logits, gt = self.frame(row, ctx)
        if self.count(logits is not None, ctx):
            self.splits[split].add(logits if logits is not None else _wrong_logits(gt), gt)

    def table(self):
        rows = []
        for split, label in (("test_s", "seen"), ("test_u", "unseen")):
            s = self.splits[split].summary()
            if s["frames"]:
                rows += [MetricRow(f"{label} J (mIoU)", float(s["J"]), int(s["frames"])),
                         MetricRow(f"{label} F", float(s["F"]), int(s["frames"]))]
        s = self.splits["test_n"].summary()
        if s["frames"]:
            rows.append(MetricRow("null S (lower is better)", float(s["S"]), int(s["frames"])))
        return self.make_table(rows)


def _class_map(path: str) -> np.ndarray:
    """``[224, 224]`` class ids of an AVSS mask PNG: a palette (``P``) image holds the ids as its
    indices; an RGB one is matched against the AVSBench palette."""
    with Image.open(path) as img:
        if img.mode == "P":
            ids = np.asarray(img.resize((224, 224), Image.NEAREST), np.int64)
            if ids.max(initial=0) >= AVSS_NUM_CLASSES:
                raise ValueError(f"class id {int(ids.max())} >= {AVSS_NUM_CLASSES}")
            return ids
    return load_avss_mask(path)[0]


class AvssScorer(_Counts):
    """Class-wise mIoU and F over the 71 AVSBench-semantic classes, and the noBg variants."""

    required_fields = ()

    def __init__(self, ctx: ScoringContext, name: str = "avss"):
        super().__init__(name)
        self.scores = masks.AvssScores()

    def add(self, row, ctx):
        gt = _open(ctx, R.gt_mask_path(row, self.name), "GT mask", lambda p: load_avss_mask(p)[0])
        pred = None if row.get("pred_mask_classes") is None else np.asarray(row["pred_mask_classes"])
        path = None if row.get("error") else (row.get("pred_mask_path") or row.get("pred_path"))
        if path and pred is None:
            pred = _open(ctx, str(path), "predicted class map", _class_map)
        if pred is not None:
            if pred.shape != gt.shape:
                raise UnusableRow(f"predicted class map {pred.shape} and GT mask {gt.shape} differ in size")
        if self.count(pred is not None, ctx):
            self.scores.add(pred if pred is not None else (gt + 1) % AVSS_NUM_CLASSES, gt)

    def table(self):
        s = self.scores.summary()
        n = int(s["frames"])
        return self.make_table([MetricRow(k, float(s[k]), n) for k in ("mIoU", "F", "mIoU_noBg", "F_noBg")])


def _binary(name: str):
    return lambda ctx: BinaryMaskScorer(ctx, name)


def _qa(name: str):
    return lambda ctx: AvqaScorer(ctx, name)


TASK_SCORERS = {"avqa": AvqaScorer, "ave": AveScorer, "avvp": AvvpScorer, "arig": ArigScorer,
                "avcap": CaptionScorer, "s4": _binary("s4"), "ms3": _binary("ms3"), "avss": AvssScorer,
                "ref-avs": RefAvsScorer, **{t: _qa(t) for t in QA_TASKS}}  # QA tasks: scored as AVQA
