"""Scores of model outputs on the synthetic dataset, and the chance level they must beat.

Parsing follows the real tasks' metrics (``shared/spec/tasks.md`` A.6; the parsers are
:mod:`crab_jax.data.records.crab_answers`):

* ``avqa``: exact match of the text in the last ``<answer> x </answer>`` (lower-cased,
  whitespace-normalised) with the record's ``answer`` (A.6.3); the QA tasks (``audcls``,
  ``viscls``, ``count``, ``where``, ``match``, ``when``) are scored the same way;
* ``ave``: segment accuracy over 10 slots from ``<event> E </event>`` and
  ``<range> s,e </range>`` against ``event, start_time, end_time`` (A.6.1);
* ``arig``: IoU of the first box in the text (``(x1,y1)...(x2,y2)`` or ``[x1,y1,x2,y2]``)
  with ``top_left, bottom_right`` (inclusive pixel boxes, A.6.4);
* ``s4``: mask IoU of a predicted binary mask with the ground-truth mask (A.6.5);
* ``s4_category``: exact match of the object named in "... making the sound in the video
  is X." with ``a_obj``.

Chance level = the mean score of the best *media-blind* answer: one fixed answer per
distinct prompt (per question text for AVQA, one answer for the other tasks), chosen with
knowledge of the answer distribution. No model that ignores the audio and frames can do
better on average, so "above chance" means the model uses the media.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

# The parsers have one home (the AV-UIE answer formats).
from crab_jax.data.records.crab import AVQA_FORMAT_TASKS, QA_TASKS
from crab_jax.data.records.crab_answers import (AVE_SLOTS, ave_slots, normalise_label, parse_answer, parse_box,
                                                parse_event, parse_s4_object)
from crab_jax.data.synthetic.qa_scenes import sample_qa_clip
from crab_jax.data.synthetic.records import arig_record, ave_record, avqa_records
from crab_jax.data.synthetic.render import track_masks
from crab_jax.data.synthetic.scenes import sample_ave, sample_avqa_clip, sample_avs

TASKS = ("avqa", "ave", "arig", "s4", "s4_category") + QA_TASKS
METRIC_NAMES = {"avqa": "accuracy", "ave": "segment accuracy", "arig": "box IoU", "s4": "mask IoU (J)",
                "s4_category": "category accuracy", **{t: "accuracy" for t in QA_TASKS}}
CHANCE_SEED = 20261124     # the generator seed of the pool chance levels are measured on
CHANCE_POOL = 512          # clips per task in that pool
CHANCE_CANDIDATES = 256    # fixed box / mask answers tried (taken from the pool's own answers)


# ----------------------------------------------------------------------------- kernels


def ave_segment_accuracy(prediction: str, event: str, start: int, end: int, slots: int = AVE_SLOTS) -> float:
    """Fraction of the ``slots`` whose predicted label equals the ground truth (unparsable: all background)."""
    pred = ave_slots(*parse_event(prediction), slots=slots)
    gt = ave_slots(normalise_label(event), (int(start), int(end)), slots=slots)
    return sum(p == g for p, g in zip(pred, gt)) / slots


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of inclusive pixel boxes ``(x1, y1, x2, y2)`` (a box with x2 < x1 or y2 < y1 is empty)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area_a = max(a[2] - a[0] + 1, 0) * max(a[3] - a[1] + 1, 0)
    area_b = max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Crab's ``mask_iou`` on binary ``[H, W]`` masks: |P∩G| / (|P∪G| + 1e-7); an empty GT scores
    the true-negative ratio."""
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"mask_iou: prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if gt.any():
        return float((pred & gt).sum() / ((pred | gt).sum() + 1e-7))
    return float((~pred & ~gt).sum() / (gt.size + 1e-7))


# ----------------------------------------------------------------------------- per-record score


def _field(record: Any, name: str, task: str):
    """A JSON field of a record: a raw JSON mapping, or a :class:`crab_jax.data.records.record.Record`
    (its ``fields`` mapping, then its attributes; an AVQA test Record keeps ``answer`` as ``gt``)."""
    if isinstance(record, Mapping):
        if name in record:
            return record[name]
        holders = [record.get("fields")]
    else:
        holders = [getattr(record, "fields", None)]
    for inner in holders:
        if isinstance(inner, Mapping) and name in inner:
            return inner[name]
    if not isinstance(record, Mapping):
        value = getattr(record, name, None)
        if value is not None:
            return value
        if task in AVQA_FORMAT_TASKS and name == "answer" and getattr(record, "gt", None) is not None:
            return record.gt
    raise KeyError(f"score({task!r}): the record has no field {name!r} (expected a {task} test record: "
                   "its JSON fields or a crab_jax.data.records.record.Record)")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; scored tasks: {list(TASKS)}")


def score(task: str, prediction: Any, record: Any, *, gt_mask: np.ndarray | None = None) -> float:
    """Score in [0, 1] of one prediction.

    Args:
      task: one of :data:`TASKS`.
      prediction: the decoded text; for ``s4`` a binary ``[H, W]`` mask (e.g. ``sigmoid(logit) > 0.5``).
      record: the test record: its JSON fields (a mapping) or a :class:`crab_jax.data.records.record.Record`
        (read by ``records.read_crab_task(task, "test", root)``). Fields used: ``answer`` (avqa and the QA tasks;
        a Record's ``gt``), ``event, start_time, end_time`` (ave), ``top_left, bottom_right``
        (arig), ``a_obj`` (s4_category).
      gt_mask: ``[H, W]`` ground-truth mask of the frame (``s4`` only).
    """
    _check_task(task)
    if task == "s4":
        if isinstance(prediction, str) or gt_mask is None:
            raise ValueError("score('s4'): pass the predicted mask array and gt_mask=; "
                             "score a text with task 's4_category'")
        return mask_iou(prediction, gt_mask)
    if not isinstance(prediction, str):
        raise TypeError(f"score({task!r}): prediction must be the decoded text, got {type(prediction).__name__}")
    if task in AVQA_FORMAT_TASKS:
        return float(parse_answer(prediction) == normalise_label(_field(record, "answer", task)))
    if task == "ave":
        return ave_segment_accuracy(prediction, _field(record, "event", task), _field(record, "start_time", task),
                                    _field(record, "end_time", task))
    if task == "arig":
        box = parse_box(prediction)
        gt = (*_field(record, "top_left", task), *_field(record, "bottom_right", task))
        return box_iou(box, gt) if box is not None else 0.0
    return float(parse_s4_object(prediction) == normalise_label(_field(record, "a_obj", task)))


def reference_record(task: str, reference_text: str) -> dict | None:
    """The record fields metric ``task`` needs, parsed from a reference answer in the format the
    answers are written in (None: unparsable). Scoring against the batch's own target text
    needs no record files: the parsed fields are the record's."""
    if task in AVQA_FORMAT_TASKS:
        answer = parse_answer(reference_text)
        return None if answer is None else {"answer": answer}
    if task == "ave":
        event, span = parse_event(reference_text)
        if event is None or span is None:
            return None
        return {"event": event, "start_time": span[0], "end_time": span[1]}
    if task == "arig":
        box = parse_box(reference_text)
        return None if box is None else {"top_left": list(box[:2]), "bottom_right": list(box[2:])}
    if task == "s4_category":
        obj = parse_s4_object(reference_text)
        return None if obj is None else {"a_obj": obj}
    raise ValueError(f"reference_record: no text reference for metric task {task!r}")


def text_scores(metrics: Sequence[str], text: str, reference_text: str) -> dict[str, float]:
    """``{metric: score}`` of a generated ``text`` against the reference answer text, for each
    text metric of :data:`TASKS` in ``metrics`` whose reference parses (others are skipped)."""
    out = {}
    for metric in metrics:
        record = reference_record(metric, reference_text)
        if record is not None:
            out[metric] = score(metric, text, record)
    return out


def summary(task: str, scores: Sequence[float]) -> dict:
    """``{metric, mean, n, chance}`` (+ ``ciou@0.5`` for arig, the fraction of IoU >= 0.5)."""
    _check_task(task)
    arr = np.asarray(scores, np.float64)
    out = {"metric": METRIC_NAMES[task], "mean": float(arr.mean()) if arr.size else float("nan"),
           "n": int(arr.size), "chance": chance_level(task)}
    if task == "arig":
        out["ciou@0.5"] = float((arr >= 0.5).mean()) if arr.size else float("nan")
    return out


# ----------------------------------------------------------------------------- chance level


def _best_constant_avqa(rows: Sequence[Mapping]) -> float:
    by_question: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        by_question[normalise_label(r["question"])][normalise_label(r["answer"])] += 1
    return sum(c.most_common(1)[0][1] for c in by_question.values()) / max(len(rows), 1)


def _best_constant_ave(rows: Sequence[Mapping]) -> float:
    names = sorted({normalise_label(r["event"]) for r in rows})
    ids = {n: i for i, n in enumerate(names)}
    gt = np.full((len(rows), AVE_SLOTS), -1)
    for k, r in enumerate(rows):
        gt[k, int(r["start_time"]): int(r["end_time"])] = ids[normalise_label(r["event"])]
    best = float((gt == -1).mean())  # the all-background answer
    for c in range(len(names)):
        for s in range(AVE_SLOTS):
            for e in range(s + 1, AVE_SLOTS + 1):
                pred = np.full(AVE_SLOTS, -1)
                pred[s:e] = c
                best = max(best, float((gt == pred).mean()))
    return best


def _iou_matrix_boxes(cand: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[C, N]`` inclusive-box IoUs."""
    c, g = cand[:, None, :].astype(np.float64), gt[None, :, :].astype(np.float64)
    iw = np.clip(np.minimum(c[..., 2], g[..., 2]) - np.maximum(c[..., 0], g[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(c[..., 3], g[..., 3]) - np.maximum(c[..., 1], g[..., 1]) + 1, 0, None)
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # noqa: E731
    return inter / (area(c) + area(g) - inter)


def _best_constant_arig(boxes: np.ndarray) -> float:
    cand = boxes[:CHANCE_CANDIDATES]
    return float(_iou_matrix_boxes(cand, boxes).mean(axis=1).max())


def _best_constant_s4(masks: np.ndarray) -> float:
    """Best fixed mask among the pool's own masks and the left / right / full frame."""
    n, h, w = masks.shape
    flat = masks.reshape(n, -1).astype(np.float32)
    halves = np.zeros((3, h, w), np.float32)
    halves[0, :, : w // 2] = 1
    halves[1, :, w // 2:] = 1
    halves[2] = 1
    cand = np.concatenate([flat[:CHANCE_CANDIDATES], halves.reshape(3, -1)])
    inter = cand @ flat.T
    union = cand.sum(1, keepdims=True) + flat.sum(1)[None] - inter
    return float((inter / (union + 1e-7)).mean(axis=1).max())


def _best_constant_category(rows: Sequence[Mapping]) -> float:
    counts = Counter(normalise_label(r["a_obj"]) for r in rows)
    return counts.most_common(1)[0][1] / max(len(rows), 1)


@functools.lru_cache(maxsize=None)
def _pool_chance(task: str) -> float:
    """Chance measured on a fixed pool drawn from the generator's own distribution (no files)."""
    split = "test"
    if task == "avqa":
        rows = [r for i in range(CHANCE_POOL) for r in avqa_records(sample_avqa_clip(CHANCE_SEED, split, i))]
        return _best_constant_avqa(rows)
    if task in QA_TASKS:
        return _best_constant_avqa([r for i in range(CHANCE_POOL)
                                    for r in avqa_records(sample_qa_clip(task, CHANCE_SEED, split, i))])
    if task == "ave":
        return _best_constant_ave([ave_record(sample_ave(CHANCE_SEED, split, i)) for i in range(CHANCE_POOL)])
    avs_task = "s4" if task.startswith("s4") else "arig"
    samples = [sample_avs(avs_task, CHANCE_SEED, split, i) for i in range(CHANCE_POOL)]
    if task == "s4_category":
        return _best_constant_category([{"a_obj": s.a_obj} for s in samples])
    masks = [track_masks(s.clip)[:, s.clip.sounding] for s in samples]
    if task == "arig":
        rows = [arig_record(s, split, m) for s, m in zip(samples, masks)]
        return _best_constant_arig(np.array([[*r["top_left"], *r["bottom_right"]] for r in rows]))
    return _best_constant_s4(np.concatenate(masks))  # S4 test records cover every frame


def chance_level(task: str, records: Sequence[Any] | None = None, *, gt_masks: np.ndarray | None = None) -> float:
    """Mean score of the best media-blind answer (see the module docstring).

    Without ``records``: measured once (cached) on a fixed pool of :data:`CHANCE_POOL` clips drawn
    from the generator, i.e. the chance level of the task as designed. With ``records`` (their
    JSON fields; for ``s4`` pass ``gt_masks [N, H, W]`` instead): the best fixed answer on exactly
    those records (slightly optimistic on small sets, where the majority answer is luckier).
    """
    _check_task(task)
    if task == "s4":
        if gt_masks is None:
            return _pool_chance(task)
        return _best_constant_s4(np.asarray(gt_masks) > 0)
    if records is None:
        return _pool_chance(task)
    if not len(records):
        raise ValueError(f"chance_level({task!r}): records is empty")
    fields = {"ave": ("event", "start_time", "end_time"), "arig": ("top_left", "bottom_right"),
              "s4_category": ("a_obj",), **{t: ("question", "answer") for t in AVQA_FORMAT_TASKS}}[task]
    rows = [{f: _field(r, f, task) for f in fields} for r in records]
    if task in AVQA_FORMAT_TASKS:
        return _best_constant_avqa(rows)
    if task == "ave":
        return _best_constant_ave(rows)
    if task == "arig":
        return _best_constant_arig(np.array([[*r["top_left"], *r["bottom_right"]] for r in rows]))
    return _best_constant_category(rows)
