"""Crab's quick-start requests (the original's ``data/example.json``) as :class:`Record` s.

Paths are relative to the data root::

  [{"task": "ave", "video_path": ..., "audio_path": ...},
   {"task": "s4", "image_path": ..., "audio_path": ..., "mask_path": ...},
   {"task": "avqa", ..., "question": ...}, {"task": "ref-avs", ..., "exp": ...}]
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Mapping

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.crab import VIDEO_FRAMES
from crab_jax.data.records.record import (AudioSpec, ReadResult, Record, entry_field, frame_number, frozen_fields,
                                          load_json_list, read_entries)


_QS_NEEDS = {"avqa": ("video_path", "audio_path", "question"), "ave": ("video_path", "audio_path"),
             "avvp": ("video_path", "audio_path"), "arig": ("image_path", "audio_path"),
             "s4": ("image_path", "audio_path"), "ms3": ("image_path", "audio_path"),
             "avss": ("image_path", "audio_path"), "ref-avs": ("image_path", "audio_path", "exp")}


def quick_start_record(request: Mapping[str, Any], source: str = "<request>") -> Record:
    """One quick-start request (the original's ``data/example.json`` entry) -> Record.

    Media: AV tasks take 10 video frames; image tasks the image plus one 1-s audio segment at
    the frame number in the image's file name (tot 5, or 10 for AVSS); Ref-AVS ten segments.
    """
    task = str(entry_field(request, "task", source)).lower()
    if task not in _QS_NEEDS:
        raise BadRecordError(source, f"quick start has no task {task!r}; known: {sorted(_QS_NEEDS)}")
    vals = {k: str(entry_field(request, k, source)) for k in _QS_NEEDS[task]}
    for k in ("video_path", "audio_path", "image_path", "mask_path"):
        if k in vals or request.get(k):
            v = str(request[k])
            if os.path.isabs(v):
                raise BadRecordError(source, f"{k} {v!r} must be relative to the data root")
            vals[k] = posixpath.normpath(v.replace("\\", "/"))
    common = dict(family="crab", task=task, mode="quick_start", split="quick_start", source=source,
                  audios=(vals["audio_path"],), mask_path=vals.get("mask_path"))
    if "video_path" in vals:
        rule = AudioSpec("avqa", 60) if task == "avqa" else AudioSpec("clip", 10)
        return Record(videos=(vals["video_path"],), num_frames=VIDEO_FRAMES, audio=rule,
                      question=vals.get("question"), **common)
    try:
        idx = frame_number(vals["image_path"])
    except ValueError as e:
        if task != "ref-avs":
            raise BadRecordError(source, str(e)) from None
        idx = None
    if task == "ref-avs":
        rule = AudioSpec("clip", 10)
    else:
        rule = AudioSpec("frame", 10 if task == "avss" else 5, idx, pad_short=task == "arig")
    return Record(image_path=vals["image_path"], audio=rule, frame_idx=idx,
                  fields=frozen_fields({"exp": vals["exp"]} if "exp" in vals else {}), **common)


def read_quick_start(path: str | os.PathLike, *, strict: bool = True) -> ReadResult:
    """Reads a quick-start request list (``[{"task": ..., ...}]``)."""
    shown = os.fspath(path)
    return read_entries(load_json_list(path, shown), shown, lambda where, e: [quick_start_record(e, where)], strict)
