"""Crab+'s task scorers (spec B.6, B.7): one object per task, fed predictions lines one by one.

Every scorer follows :class:`~crab_jax.metrics.tables.TaskScorer` and reads lines of crab_jax
(:func:`crab_jax.families.crab_plus.scoring.prediction_metadata`) and the original's
``inference_{task}.jsonl`` alike: the GT is the string the original stores, ``output``, or a
record field of the same name as in the annotation JSON where the original's line has one too
(``type``, ``split``, ``fid``, ``image_path``) or only crab_jax's line has it (``event``,
``multi_choice``, ``top_left`` ...). The keys each scorer needs are its ``required_fields``:

* a2v, v2a, ks, ucf, meld, cremad, dfew, mafw, avcap: ``predict`` (or ``error``), ``output``.
* avqa: + ``type`` (MUSIC-AVQA's question type list).
* avqa_thu: + ``multi_choice`` or ``instruction`` (the options, for letter / index answers);
  ``answer`` (else ``output``).
* ave: ``event``, ``start_time``, ``end_time``, else ``output``. avvp: ``event``, else ``output``.
  arig: ``top_left``, ``bottom_right``, else ``output``.
* s4, ms3: the SAM2 stage's ``sam2_valid`` / ``sam2_reason`` / ``pred_mask_path``; ``mask_path``
  or ``image_path`` (the GT by the B.6 rules, :func:`crab_jax.data.records.crab_plus.crab_plus_gt_mask_path`).
* ref_avs: as s4, + ``split`` (test_s / test_u / test_n), ``fid``, ``sam2_negative``.

A prediction that cannot be parsed (or a line with an ``error``, or a segmentation line the
SAM2 stage marked invalid or never saw) is *unparsable*: scored as wrong, or left out with
``ctx.skip_unparsable`` (``--skip-unparsable``; for S4 / MS3 / Ref-AVS that is the original's
valid-sample rule). Values are fractions in [0, 1], except CIDEr and Ref-AVS null S.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from crab_jax.data.records import crab_answers as A
from crab_jax.data.records.crab_plus import crab_plus_gt_mask_path
from crab_jax.families.crab_plus import answers as P
from crab_jax.metrics import boxes, captions, classification, masks
from crab_jax.metrics.event_scorers import AveSegmentScorer, AvvpEventScorer
from crab_jax.metrics.tables import LineCounts, MetricRow, ScoringContext, UnusableRow, prediction_text, read_reference

TEXT_FIELDS = (("predict", "error"), ("output",))
MASK_SIZE = 224  # the SAM2 stage's masks and GTs are 224 x 224 (spec B.6)
REF_AVS_SPLITS = ("test_s", "test_u", "test_n")
# Label-task metrics: table name -> kernel over (predictions, ground truths).
LABEL_METRICS: dict[str, Callable] = {"accuracy": classification.accuracy, "WAR": classification.accuracy,
                                      "UAR": classification.unweighted_average_recall,
                                      "weighted F1": classification.weighted_f1}


def _output(row: Mapping[str, Any], task: str) -> str:
    value = row.get("output")
    if value is None:
        raise UnusableRow(f"no 'output' (the {task} GT string)")
    return str(value)


# ----------------------------------------------------------------------------- label tasks


def _label_pair(row, text, task):
    """ks / ucf / emotions: the last ``<answer>`` against the GT's."""
    gt = P.reference_label(_output(row, task))
    if not gt:
        raise UnusableRow(f"empty {task} GT label in 'output' {row.get('output')!r}")
    return (None if text is None else P.answer_label(text)), gt


def _index_pair(row, text, task):
    """a2v / v2a: the chosen 1 / 2 against the GT's ``<answer>1</answer>.``."""
    gt = P.parse_choice_index(_output(row, task))
    if gt is None:
        raise UnusableRow(f"{task} 'output' {row.get('output')!r} is not '<answer>1</answer>.' or '<answer>2</answer>.'")
    return (None if text is None else P.parse_choice_index(text)), gt


def _thu_options(row) -> list[str] | None:
    options = P.option_list(row.get("multi_choice")) if row.get("multi_choice") is not None else None
    return options or (P.instruction_options(row["instruction"]) if row.get("instruction") else None)


def _multiple_choice_pair(row, text, task):
    """AVQA-THU: the chosen option (text or letter) against ``answer`` (text, index or letter)."""
    options = _thu_options(row)
    answer = row.get("answer") if row.get("answer") is not None else _output(row, task)
    accepted = P.multiple_choice_answers(answer, options)
    gt = accepted[0]  # the option text when the answer is an index / letter
    pred = None if text is None else P.parse_multiple_choice(text, options)
    return (gt if pred in accepted else pred), gt


class LabelScorer(LineCounts):
    """One label per line (``pair(row, text, task) -> (prediction or None, GT)``), scored by the
    :data:`LABEL_METRICS` named in ``metrics``."""

    required_fields = TEXT_FIELDS

    def __init__(self, ctx: ScoringContext, name: str, pair, metrics: tuple[str, ...] = ("accuracy",)):
        super().__init__(name)
        self.pair, self.metrics = pair, metrics
        self.preds: list = []
        self.gts: list = []

    def add(self, row, ctx):
        text = prediction_text(row)
        pred, gt = self.pair(row, text, self.name)
        if self.count(pred is not None, ctx):
            self.preds.append(pred)
            self.gts.append(gt)

    def table(self):
        n = len(self.gts)
        return self.make_table([MetricRow(m, LABEL_METRICS[m](self.preds, self.gts) if n else float("nan"), n)
                                for m in self.metrics])


class AvqaScorer(LineCounts):
    """MUSIC-AVQA: accuracy of the last ``<answer>`` against ``output`` (the record's ``answer``),
    overall and per question type (spec A.6.3)."""

    required_fields = TEXT_FIELDS + (("type",),)

    def __init__(self, ctx: ScoringContext, name: str = "avqa"):
        super().__init__(name)
        self.correct: dict[tuple[str, ...], list[int]] = {}

    def add(self, row, ctx):
        types = P.avqa_question_types(row.get("type"))
        if types is None:
            raise UnusableRow(f"question 'type' {row.get('type')!r} is not a list like [\"Audio\", \"Counting\"]")
        pred, gt = _label_pair(row, prediction_text(row), self.name)
        if self.count(pred is not None, ctx):
            self.correct.setdefault(types[:2], []).append(int(pred == gt))

    def table(self):
        return self.make_table([MetricRow(*r) for r in classification.grouped_accuracy(self.correct)])


# ----------------------------------------------------------------------------- AVE, AVVP, ARIG, captions


def _ave_reference(row) -> tuple[str, int, int]:
    if all(row.get(k) is not None for k in ("event", "start_time", "end_time")):
        event, s, e = row["event"], row["start_time"], row["end_time"]
    else:
        parsed = P.parse_ave_reference(_output(row, "ave"))
        if parsed is None:
            raise UnusableRow(f"no 'event' / 'start_time' / 'end_time' and 'output' {row.get('output')!r} "
                              "is not 'event:E start_time:S end_time:T'")
        event, s, e = parsed
    try:
        return str(event), int(s), int(e)
    except (TypeError, ValueError):
        raise UnusableRow(f"AVE times {s!r}, {e!r} are not integers") from None


class AveScorer(AveSegmentScorer):
    """AVE segment accuracy (spec A.6.1): equal 1-s slots over 10 x videos; unparsable: all background."""

    def __init__(self, ctx: ScoringContext, name: str = "ave"):
        super().__init__(name, reference=_ave_reference, parse=P.parse_ave, required_fields=TEXT_FIELDS)


def _avvp_reference(row) -> A.AvvpParse:
    """The GT event matrices: the line's ``event`` (the record's label text), else ``output``."""
    event = row.get("event")
    if event is None:
        event = _output(row, "avvp")
    parsed = A.parse_avvp(str(event))
    if not parsed.found:
        raise UnusableRow(f"AVVP GT {str(event)[:80]!r} holds no audio / visual events")
    if parsed.unknown:
        raise UnusableRow(f"AVVP GT names classes outside the LLP list: {list(parsed.unknown)}")
    return parsed


class AvvpScorer(AvvpEventScorer):
    """LLP segment- and event-level F (spec A.6.2, :class:`crab_jax.metrics.avvp.AvvpScores`)."""

    def __init__(self, ctx: ScoringContext, name: str = "avvp"):
        super().__init__(name, reference=_avvp_reference, parse=P.parse_avvp, required_fields=TEXT_FIELDS)


def _arig_reference(row) -> tuple[int, int, int, int]:
    if row.get("top_left") is not None and row.get("bottom_right") is not None:
        try:
            (x1, y1), (x2, y2) = row["top_left"], row["bottom_right"]
            return int(x1), int(y1), int(x2), int(y2)
        except (TypeError, ValueError):
            raise UnusableRow(f"ARIG box {row['top_left']!r}, {row['bottom_right']!r} is not two [x, y] pairs") from None
    box = P.parse_box(_output(row, "arig"))
    if box is None:
        raise UnusableRow(f"'output' {row.get('output')!r} holds no '<obj>(x1,y1)(x2,y2)</obj>' box")
    return box


class ArigScorer(LineCounts):
    """ARIG (spec A.6.4): box IoU, cIoU (IoU >= 0.5) and AUC (:class:`crab_jax.metrics.boxes.BoxScores`).
    A missing box, or one whose corners are not in order (``x1 >= x2`` or ``y1 >= y2``), is
    unparsable (IoU 0 when scored)."""

    required_fields = TEXT_FIELDS

    def __init__(self, ctx: ScoringContext, name: str = "arig"):
        super().__init__(name)
        self.scores = boxes.BoxScores()
        self.invalid = 0

    def add(self, row, ctx):
        gt = _arig_reference(row)
        text = prediction_text(row)
        box = None if text is None else P.parse_box(text)
        if box is not None and not P.valid_box(box):
            self.invalid += 1
            box = None
        if self.count(box is not None, ctx):
            self.scores.add(box, gt)

    def table(self):
        s = self.scores.summary()
        notes = [f"{self.invalid} boxes with corners out of order (x1 >= x2 or y1 >= y2) counted unparsable"] \
            if self.invalid else []
        return self.make_table([MetricRow(k, float(s[k]), int(s["n"])) for k in ("mIoU", "cIoU", "AUC")], notes)


class CaptionScorer(LineCounts):
    """AV captioning (spec A.6.7): BLEU@1-4, METEOR, ROUGE-L, CIDEr against ``output`` (Crab+'s avcap
    is train-only: the held-out evaluation's target text); caption and reference are the last
    ``<answer>`` when there is one, else the text (unparsable: an empty caption)."""

    required_fields = TEXT_FIELDS

    def __init__(self, ctx: ScoringContext, name: str = "avcap"):
        super().__init__(name)
        self.predictions: dict[str, str] = {}
        self.references: dict[str, list[str]] = {}
        self._ids = itertools.count()

    @staticmethod
    def caption(text: str) -> str:
        """The last ``<answer>``, else the whole text; lower case, single spaces (the PTB tokenizer
        lower-cases anyway)."""
        label = P.answer_label(text)
        return label if label is not None else A.normalise_label(A.clean_output(text))

    def add(self, row, ctx):
        ref = self.caption(_output(row, self.name))
        if not ref.strip():
            raise UnusableRow("empty reference caption in 'output'")
        text = prediction_text(row)
        caption = "" if text is None else self.caption(text)
        if not self.count(bool(caption.strip()), ctx):
            return
        key = str(next(self._ids))
        self.predictions[key], self.references[key] = caption, [ref]

    def table(self):
        if not self.predictions:
            return self.make_table([])
        scores = captions.caption_scores(self.predictions, self.references)
        n = len(self.predictions)
        rows = [MetricRow(k, float(v), n) for k, v in scores.items() if k in captions.METRIC_NAMES and v is not None]
        notes = [f"captions tokenised by {scores['tokenizer']}"] if scores.get("tokenizer") else []
        if scores.get("METEOR", 0) is None:
            notes.append("METEOR not computed: it runs pycocoevalcap's Java jar (needs `java` on PATH)")
        return self.make_table(rows, notes)


# ----------------------------------------------------------------------------- masks (the SAM2 stage's output)


def load_gt_mask(path: str) -> np.ndarray:
    """The SAM2 scripts' ``load_mask``: PIL ``L``, NEAREST resize to 224, ``> 0``: ``[224, 224]`` bool."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((MASK_SIZE, MASK_SIZE), Image.NEAREST)) > 0


def load_pred_mask(path: str) -> np.ndarray:
    """A SAM2-stage mask PNG (0 / 255, 224 x 224): ``[224, 224]`` bool (nonzero = foreground)."""
    with Image.open(path) as img:
        mask = np.asarray(img.convert("L")) > 0
    if mask.shape != (MASK_SIZE, MASK_SIZE):
        raise ValueError(f"expected a {MASK_SIZE}x{MASK_SIZE} mask, got {mask.shape[1]}x{mask.shape[0]}")
    return mask


def gt_mask_file(row: Mapping[str, Any], task: str) -> str:
    """The line's ``mask_path``, else the B.6 rule applied to its ``image_path``."""
    if row.get("mask_path"):
        return str(row["mask_path"])
    if row.get("image_path"):
        path = crab_plus_gt_mask_path(task, str(row["image_path"]), row.get("fid"))
        if path is not None:
            return path
        raise UnusableRow(f"{task} 'image_path' {row['image_path']!r} has no GT mask by the B.6 rule "
                          + ("(needs '/frames/')" if task != "ref_avs" else "(needs '/media/', '/frames/' and 'fid')"))
    raise UnusableRow(f"no 'mask_path' or 'image_path' (the {task} GT mask)")


def sam2_prediction(row: Mapping[str, Any], ctx: ScoringContext) -> tuple[np.ndarray | None, str | None]:
    """``(predicted [224, 224] bool mask, None)`` of a line the SAM2 stage scored valid (all zeros
    for a Ref-AVS negative), or ``(None, reason)`` for an unparsable one."""
    if row.get("error"):
        return None, "media error at inference"
    if "sam2_valid" not in row:
        return None, "no SAM2 stage fields (run the SAM2 stage on the predictions first)"
    if not row.get("sam2_valid"):
        return None, str(row.get("sam2_reason") or "invalid (no reason given)")
    if row.get("sam2_negative"):
        return np.zeros((MASK_SIZE, MASK_SIZE), bool), None
    if not row.get("pred_mask_path"):
        raise UnusableRow("sam2_valid but no 'pred_mask_path'")
    return read_reference(ctx, str(row["pred_mask_path"]), "predicted mask", load_pred_mask), None


class SegmentationScorer(LineCounts):
    """S4 / MS3 (spec B.6): per-frame J and F of the SAM2 mask (:func:`crab_jax.metrics.masks.binary_jf`),
    means over frames; an invalid line scores J = F = 0 or is left out (``skip_unparsable``)."""

    required_fields = (("mask_path", "image_path"),)

    def __init__(self, ctx: ScoringContext, name: str):
        super().__init__(name)
        self.scores = masks.BinaryJFScores()
        self.reasons: Counter = Counter()

    def invalid(self, reason: str, ctx: ScoringContext) -> bool:
        """Counts an unparsable line; True when it is scored (as wrong)."""
        self.reasons[reason] += 1
        return self.count(False, ctx)

    def add(self, row, ctx):
        pred, reason = sam2_prediction(row, ctx)
        if pred is None:
            if self.invalid(reason, ctx):
                self.scores.add_scores(0.0, 0.0)
            return
        gt = read_reference(ctx, gt_mask_file(row, self.name), "GT mask", load_gt_mask)
        self.count(True, ctx)
        self.scores.add(pred, gt)

    def reason_notes(self) -> list[str]:
        if not self.reasons:
            return []
        listed = ", ".join(f"{r} x{n}" for r, n in self.reasons.most_common())
        rule = "left out (--skip-unparsable)" if self.skipped else "scored J = F = 0"
        return [f"{sum(self.reasons.values())} invalid lines, {rule}: {listed}"]

    def table(self):
        s = self.scores.summary()
        return self.make_table([MetricRow("J (mIoU)", s["J"], s["frames"]), MetricRow("F", s["F"], s["frames"])],
                               self.reason_notes())


class RefAvsScorer(SegmentationScorer):
    """Ref-AVS (spec B.6): J and F on ``test_s`` (seen) and ``test_u`` (unseen) as S4, null S
    (:func:`crab_jax.metrics.masks.null_s_over_background`) on ``test_n``; a predicted "false" is an
    all-zero mask. On test_n a full-image mask (S = inf) and an invalid line have no finite S: both
    are left out of the mean (the script's rule for inf) and counted in the notes."""

    required_fields = (("split",),)

    def __init__(self, ctx: ScoringContext, name: str = "ref_avs"):
        super().__init__(ctx, name)
        self.splits = {"test_s": masks.BinaryJFScores(), "test_u": masks.BinaryJFScores()}
        self.null = masks.BackgroundNullScores()
        self.null_invalid = 0

    def add(self, row, ctx):
        split = str(row.get("split"))
        if split not in REF_AVS_SPLITS:
            raise UnusableRow(f"Ref-AVS 'split' {row.get('split')!r} is not one of {REF_AVS_SPLITS}")
        pred, reason = sam2_prediction(row, ctx)
        if split == "test_n":  # the object is absent: S needs no GT
            if pred is None:
                self.reasons[f"{reason} (test_n)"] += 1
                self.unparsable += 1
                self.skipped += 1
                self.null_invalid += 1
            else:
                self.count(True, ctx)
                self.null.add(pred)
            return
        if pred is None:
            if self.invalid(f"{reason} ({split})", ctx):
                self.splits[split].add_scores(0.0, 0.0)
            return
        gt = read_reference(ctx, gt_mask_file(row, self.name), "GT mask", load_gt_mask)
        self.count(True, ctx)
        self.splits[split].add(pred, gt)

    def table(self):
        rows = []
        for split, label in (("test_s", "seen"), ("test_u", "unseen")):
            s = self.splits[split].summary()
            if s["frames"]:
                rows += [MetricRow(f"{label} J (mIoU)", s["J"], s["frames"]), MetricRow(f"{label} F", s["F"], s["frames"])]
        s = self.null.summary()
        if s["frames"]:
            rows.append(MetricRow("null S (lower is better)", s["S"], s["frames"]))
        notes = self.reason_notes()
        if s["infinite"]:
            notes.append(f"test_n: {s['infinite']} full-image masks (S = inf) left out of null S")
        if self.null_invalid:
            notes.append(f"test_n: {self.null_invalid} invalid lines have no S and are always left out")
        return self.make_table(rows, notes)


def _labels(name: str, pair, metrics: tuple[str, ...] = ("accuracy",)):
    return lambda ctx: LabelScorer(ctx, name, pair, metrics)


# Task -> scorer factory ``(ctx) -> TaskScorer`` for every Crab+ test task (and avcap).
TASK_SCORERS: dict[str, Callable[[ScoringContext], Any]] = {
    "a2v": _labels("a2v", _index_pair), "v2a": _labels("v2a", _index_pair),
    "ks": _labels("ks", _label_pair), "ucf": _labels("ucf", _label_pair),
    "meld": _labels("meld", _label_pair, ("accuracy", "weighted F1")), "cremad": _labels("cremad", _label_pair),
    "dfew": _labels("dfew", _label_pair, ("WAR", "UAR")), "mafw": _labels("mafw", _label_pair, ("WAR", "UAR")),
    "avqa": AvqaScorer, "avqa_thu": _labels("avqa_thu", _multiple_choice_pair), "ave": AveScorer,
    "avvp": AvvpScorer, "arig": ArigScorer, "avcap": CaptionScorer,
    "s4": lambda ctx: SegmentationScorer(ctx, "s4"), "ms3": lambda ctx: SegmentationScorer(ctx, "ms3"),
    "ref_avs": RefAvsScorer,
}

# Task -> metric keys (``crab_jax.evaluation.scoring.metric_key`` of the table rows) of a
# run summary, the first one present wins.
HEADLINE = {
    "a2v": ("accuracy",), "v2a": ("accuracy",), "ks": ("accuracy",), "ucf": ("accuracy",),
    "meld": ("accuracy", "weighted_F1"), "cremad": ("accuracy",), "dfew": ("WAR", "UAR"), "mafw": ("WAR", "UAR"),
    "avqa": ("accuracy",), "avqa_thu": ("accuracy",), "ave": ("segment_accuracy",),
    "avvp": ("segment_Type@AV", "event_Type@AV"), "arig": ("cIoU", "AUC"), "avcap": ("CIDEr",),
    "s4": ("J_mIoU", "F"), "ms3": ("J_mIoU", "F"), "ref_avs": ("seen_J_mIoU", "unseen_J_mIoU", "null_S_lower_is_better"),
}
