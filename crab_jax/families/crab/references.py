"""The references of Crab's test samples: written from records into predictions lines, read back
from crab_jax's lines and from the original's.

A crab_jax line (:func:`crab_jax.families.crab.scoring.prediction_metadata`) carries
``reference``: the record fields its task is scored against (:func:`record_reference`). The
original's ``infer_results.jsonl`` lines carry only the GT string ``output``, which
``UnifiedTestDataset`` renders from the same record fields; it is read back as that rendering
(AVE ``"event:{e} start_time:{s} end_time:{t}"``, AVQA the ``answer``, AVVP the record's
``event``, ARIG ``"... <obj>(x1,y1)(x2,y2)</obj>."``, captioning ``desc``), never parsed as a
model answer would be. Every reader raises :class:`~crab_jax.families.base.UnusableRow`
naming the field it could not read.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from crab_jax.data.records import crab_answers as A
from crab_jax.data.records.crab import AVQA_FORMAT_TASKS
from crab_jax.data.records.record import Record
from crab_jax.metrics.tables import UnusableRow

SEG_TASKS = ("s4", "ms3", "avss", "ref-avs")


def record_reference(record: Record) -> dict[str, Any]:
    """The record fields ``record``'s task is scored against (JSON-serialisable; fields a
    quick-start record lacks are absent)."""
    f, task = record.fields, record.task
    if task in AVQA_FORMAT_TASKS:
        out = {"answer": record.gt if record.gt is not None else record.answer, "type": f.get("type")}
    elif task == "ave":
        out = {k: f.get(k) for k in ("event", "start_time", "end_time")}
    elif task == "avvp":
        out = {"event": f.get("event")}
    elif task == "arig":
        out = {"a_obj": f.get("a_obj"), "top_left": _as_list(f.get("top_left")),
               "bottom_right": _as_list(f.get("bottom_right")), "mask_path": record.mask_path}
    elif task == "avcap":
        out = {"desc": record.gt if record.gt is not None else record.answer}
    elif task in SEG_TASKS:
        out = {"mask_path": record.mask_path, "frame_idx": record.frame_idx}
        if task == "ref-avs":
            out.update(split=record.split, exp=f.get("exp"))
        elif task != "avss":
            out["a_obj"] = f.get("a_obj")
    else:
        out = {}
    return {k: v for k, v in out.items() if v is not None}


def _as_list(v):
    return None if v is None else [int(x) for x in v]


# ----------------------------------------------------------------------------- reading lines


def _reference_field(row: Mapping[str, Any], name: str, task: str):
    """``row["reference"][name]`` of a crab_jax line, or None for a line without ``reference``."""
    ref = row.get("reference")
    if ref is None:
        return None
    if not isinstance(ref, Mapping):
        raise UnusableRow(f"'reference' is a {type(ref).__name__}, expected an object")
    if ref.get(name) is None:
        raise UnusableRow(f"'reference' lacks {name!r} (the {task} scorer needs it)")
    return ref[name]


def _output(row: Mapping[str, Any], task: str) -> str:
    """The original's GT string ``output`` (its ``</s>`` dropped)."""
    value = row.get("output")
    if value is None:
        raise UnusableRow(f"no 'reference' and no 'output' (the {task} GT)")
    return A.clean_output(str(value))


def question_types(value) -> tuple[str, ...]:
    """AVQA ``type``: a stringified list ``'["Audio", "Counting"]'`` or a list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UnusableRow(f"question type {value!r} is not a JSON list like '[\"Audio\", \"Counting\"]'") from None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise UnusableRow(f"question type {value!r} is not a list of names like [\"Audio\", \"Counting\"]")
    return tuple(value)


def avqa_reference(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """``(normalised answer, question types)``."""
    answer = _reference_field(row, "answer", "avqa")
    kind = _reference_field(row, "type", "avqa") if answer is not None else row.get("question_type")
    if answer is None:
        answer = _output(row, "avqa")
    if kind is None:
        raise UnusableRow("no question type ('reference.type' or 'question_type')")
    return A.normalise_label(answer), question_types(kind)


def ave_reference(row: Mapping[str, Any]) -> tuple[str, int, int]:
    """``(event, start_time, end_time)``."""
    if row.get("reference") is not None:
        event, s, e = (_reference_field(row, k, "ave") for k in ("event", "start_time", "end_time"))
    else:
        parsed = A.parse_ave_reference(_output(row, "ave"))
        if parsed is None:
            raise UnusableRow(f"'output' {row.get('output')!r} is not 'event:E start_time:S end_time:T'")
        event, s, e = parsed
    try:
        return str(event), int(s), int(e)
    except (TypeError, ValueError):
        raise UnusableRow(f"AVE times {s!r}, {e!r} are not integers") from None


def avvp_reference(row: Mapping[str, Any]) -> A.AvvpParse:
    """The GT event matrices from the record's ``event`` (its label text)."""
    event = _reference_field(row, "event", "avvp")
    if event is None:
        event = _output(row, "avvp")
    if isinstance(event, Mapping):  # {"audio": "...", "visual": "..."}
        event = " ".join(f"<{m}_event>{event.get(m, '')}</{m}_event>" for m in ("audio", "visual"))
    parsed = A.parse_avvp(str(event))
    if not parsed.found:
        raise UnusableRow(f"AVVP GT {str(event)[:80]!r} holds no audio / visual events")
    if parsed.unknown:
        raise UnusableRow(f"AVVP GT names classes outside the LLP list: {list(parsed.unknown)}")
    return parsed


def arig_reference(row: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """The GT box ``(x1, y1, x2, y2)``."""
    top_left = _reference_field(row, "top_left", "arig")
    if top_left is not None:
        bottom_right = _reference_field(row, "bottom_right", "arig")
        try:
            (x1, y1), (x2, y2) = top_left, bottom_right
            return int(x1), int(y1), int(x2), int(y2)
        except (TypeError, ValueError):
            raise UnusableRow(f"ARIG box {top_left!r}, {bottom_right!r} is not two [x, y] pairs") from None
    box = A.parse_box(_output(row, "arig"))
    if box is None:
        raise UnusableRow(f"'output' {row.get('output')!r} holds no '<obj>(x1,y1)(x2,y2)</obj>' box")
    return box


def caption_reference(row: Mapping[str, Any]) -> list[str]:
    """The reference captions (``desc``; a list is kept as several references)."""
    desc = _reference_field(row, "desc", "avcap")
    if desc is None:
        desc = _output(row, "avcap")
    refs = [str(d) for d in desc] if isinstance(desc, (list, tuple)) else [str(desc)]
    if not any(r.strip() for r in refs):
        raise UnusableRow("empty reference caption")
    return refs


def gt_mask_path(row: Mapping[str, Any], task: str) -> str:
    """The GT mask file: ``reference.mask_path`` (crab_jax), else the original's ``mask_path``
    or ``gt_path`` (its saved 0/255 GT, for Ref-AVS / S4 / MS3 lines)."""
    path = _reference_field(row, "mask_path", task)
    for key in ("mask_path", "gt_path"):
        if path is None:
            path = row.get(key)
    if not path:
        raise UnusableRow(f"no GT mask ('reference.mask_path', 'mask_path' or 'gt_path') for {task}")
    return str(path)


def ref_avs_split(row: Mapping[str, Any], predictions_file: str) -> str:
    """``test_s`` / ``test_u`` / ``test_n`` of a Ref-AVS line: its reference, its ``split``, the
    original's null lines (they hold ``s``), else the split named in the file's path (the
    original writes ``inference_ref_avs_<split>...``)."""
    ref = row.get("reference")
    split = ref.get("split") if isinstance(ref, Mapping) else None
    split = split or row.get("split")
    if split is None and "s" in row and "iou" not in row:
        split = "test_n"
    if split is None:
        found = [s for s in ("test_s", "test_u", "test_n") if s in str(predictions_file)]
        split = found[0] if len(found) == 1 else None
    if split not in ("test_s", "test_u", "test_n"):
        raise UnusableRow(f"Ref-AVS line without a split (test_s / test_u / test_n) in 'reference', 'split' "
                          f"or the file name, got {split!r}")
    return split
