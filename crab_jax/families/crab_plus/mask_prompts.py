"""Crab+'s SAM2 prompts: a predicted answer text -> the box / points SAM2 segments with (spec B.6).

The original's second stage (``seg/scripts/inference_3.py`` for S4 / MS3,
``inference_ref_3.py`` for Ref-AVS) parses each ``predict`` text as follows.

S4 / MS3:
  1. cut at the first ``</s>``; find every ``[x,y]`` / ``[x1,y1,x2,y2]``
     (:data:`COORDINATES`); 4-number matches are boxes (the FIRST one is used), 2-number
     matches are points. No match: invalid ("no coordinates").
  2. a box and >= 1 point: the box + the LAST min(3, #points) points; no box but >= 3
     points: the last 3 points; otherwise invalid ("insufficient coordinates"; a box
     without points is invalid).
Ref-AVS:
  1. the cut text must hold ``<answer>true</answer>`` and no ``<answer>false</answer>``,
     and a match; then the first box and the points (the last 3 if there are more);
     either a box or >= 1 point suffices.
  2. otherwise, a ``<answer>false</answer>`` anywhere in the WHOLE text (the original
     tests the uncut text here) makes it a negative: a valid prediction whose mask is all
     zeros; else invalid ("no coordinates" when the answer was true, else
     "no <answer>true</answer>").
Both then validate at 224 px (:data:`IMAGE_SIZE`): ``0 <= x1 < x2 < 224``,
``0 <= y1 < y2 < 224`` ("box out of range"), every point ``0 <= x, y < 224``
("point out of range").
"""

from __future__ import annotations

import dataclasses
import re

IMAGE_SIZE = 224  # the frame SAM2 sees (LANCZOS-resized) and the coordinates' frame
COORDINATES = re.compile(r"\[(\d+),(\d+)(?:,(\d+),(\d+))?\]")
END_OF_TEXT = "</s>"
ANSWER_TRUE = "<answer>true</answer>"
ANSWER_FALSE = "<answer>false</answer>"
MAX_POINTS = 3  # SAM2 gets at most this many points (the last ones of the text)
AVS_TASKS = ("s4", "ms3")
REF_AVS_TASK = "ref_avs"
MASK_TASKS = AVS_TASKS + (REF_AVS_TASK,)

Box = tuple[int, int, int, int]
Point = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class MaskPrompt:
    """What SAM2 is asked for one prediction.

    valid: the prediction gave a usable prompt, or is a Ref-AVS negative.
    reason: why not valid (None when valid).
    negative: Ref-AVS predicted ``<answer>false</answer>``: the mask is all zeros, SAM2 is not run.
    box: ``(x1, y1, x2, y2)`` in 224-px coordinates, or None.
    points: ``((x, y), ...)`` in 224-px coordinates (labels all 1), at most :data:`MAX_POINTS`.
    An invalid prompt keeps the box / points it selected (empty when parsing failed earlier).
    """

    valid: bool
    reason: str | None
    negative: bool
    box: Box | None
    points: tuple[Point, ...]


def _invalid(reason: str, box: Box | None = None, points: tuple[Point, ...] = ()) -> MaskPrompt:
    return MaskPrompt(False, reason, False, box, points)


def parse_coordinates(text: str) -> tuple[list[Box], list[Point]]:
    """``(boxes, points)`` of ``text`` in order of appearance (the caller cuts at ``</s>``)."""
    boxes, points = [], []
    for m in COORDINATES.finditer(text):
        if m.group(3) is not None:
            boxes.append(tuple(int(g) for g in m.groups()))
        else:
            points.append((int(m.group(1)), int(m.group(2))))
    return boxes, points


def validate(box: Box | None, points: tuple[Point, ...]) -> MaskPrompt:
    """The prompt, valid if every coordinate lies in the 224-px frame (box corners ordered)."""
    if box is not None:
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 < IMAGE_SIZE and 0 <= y1 < y2 < IMAGE_SIZE):
            return _invalid("box out of range", box, points)
    if any(not (0 <= x < IMAGE_SIZE and 0 <= y < IMAGE_SIZE) for x, y in points):
        return _invalid("point out of range", box, points)
    return MaskPrompt(True, None, False, box, points)


def avs_prompt(text: str) -> MaskPrompt:
    """S4 / MS3 (``inference_3.py``, see the module docstring)."""
    boxes, points = parse_coordinates(text.split(END_OF_TEXT, 1)[0])
    if not boxes and not points:
        return _invalid("no coordinates")
    box = boxes[0] if boxes else None
    if box is not None and points:
        return validate(box, tuple(points[-MAX_POINTS:]))
    if box is None and len(points) >= MAX_POINTS:
        return validate(None, tuple(points[-MAX_POINTS:]))
    return _invalid("insufficient coordinates", box, tuple(points))


def ref_avs_prompt(text: str) -> MaskPrompt:
    """Ref-AVS (``inference_ref_3.py``, see the module docstring)."""
    cut = text.split(END_OF_TEXT, 1)[0]
    answered_true = ANSWER_TRUE in cut and ANSWER_FALSE not in cut
    if answered_true:
        boxes, points = parse_coordinates(cut)
        if boxes or points:
            return validate(boxes[0] if boxes else None, tuple(points[-MAX_POINTS:]))
    if ANSWER_FALSE in text:
        return MaskPrompt(True, None, True, None, ())
    return _invalid("no coordinates" if answered_true else f"no {ANSWER_TRUE}")


def mask_prompt(task: str, text: str) -> MaskPrompt | None:
    """The SAM2 prompt of a ``task`` prediction ``text``; None for a task without a mask."""
    if task in AVS_TASKS:
        return avs_prompt(text)
    if task == REF_AVS_TASK:
        return ref_avs_prompt(text)
    return None
