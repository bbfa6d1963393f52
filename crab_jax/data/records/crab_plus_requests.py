"""Crab+ requests on a user's own clips (``python -m crab_jax.infer --input requests.json``) as
test :class:`Record` s, prompted exactly as the AV-UIE v2 test records of the same task.

Paths are relative to ``--media-root``; one entry per request::

  [{"task": "ave", "video_path": "clip.mp4", "audio_path": "clip.wav"},
   {"task": "avqa", "video_path": ..., "audio_path": ..., "question": "How many instruments are playing?"},
   {"task": "s4", "image_path": "frames/3.jpg", "audio_path": "audio.wav", "frame_idx": 3},
   {"task": "ref_avs", "image_path": ..., "audio_path": ..., "object": "the dog on the left"},
   {"task": "a2v", "video_path": ..., "video2_path": ..., "audio_path": ...},
   {"task": "v2a", "video_path": ..., "audio_path": ..., "audio2_path": ...}]

Fields per task: every task needs ``audio_path`` and a ``video_path`` (image tasks s4 / ms3 /
ref_avs / arig: ``image_path``); a2v also ``video2_path``, v2a ``audio2_path``; avqa
``question``; avqa_thu ``question_text`` and ``multi_choice``; ref_avs ``object``. S4 / MS3 /
Ref-AVS take the audio slice ``frame_idx`` (default: the number in the image's file name, as
AVSBench frames are named, else 0). Frames per video as the dataset's: 4 for the emotion
tasks, 10 otherwise.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Mapping

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.crab_plus import CRAB_PLUS_EMOTION_TASKS, CRAB_PLUS_IMAGE_TASKS, CRAB_PLUS_TASKS
from crab_jax.data.records.record import (AudioSpec, ReadResult, Record, entry_field, frame_number, frozen_fields,
                                          load_json_list, read_entries)

# Prompt fields each task's instruction reads (crab_jax.families.crab_plus.prompts).
_PROMPT_FIELDS = {"avqa": ("question",), "avqa_thu": ("question_text", "multi_choice"), "ref_avs": ("object",)}
_SLICE_TASKS = ("s4", "ms3", "ref_avs")  # the audio item is the 1-s slice of frame_idx


def _path(request: Mapping[str, Any], key: str, source: str) -> str:
    value = str(entry_field(request, key, source))
    if os.path.isabs(value):
        raise BadRecordError(source, f"{key} {value!r} must be relative to --media-root")
    return posixpath.normpath(value.replace("\\", "/"))


def request_record(request: Mapping[str, Any], source: str = "<request>") -> Record:
    """One request (module docstring) -> a Crab+ test record."""
    task = str(entry_field(request, "task", source)).lower().replace("-", "_")
    if task not in CRAB_PLUS_TASKS:
        raise BadRecordError(source, f"Crab+ has no task {task!r}; known: {list(CRAB_PLUS_TASKS)}")
    fields = {k: str(entry_field(request, k, source)) for k in _PROMPT_FIELDS.get(task, ())}
    audios = (_path(request, "audio_path", source),) + ((_path(request, "audio2_path", source),)
                                                         if task == "v2a" else ())
    common = dict(family="crab_plus", task=task, mode="test", split="quick_start", source=source, audios=audios,
                  fields=frozen_fields(fields), question=fields.get("question") or fields.get("question_text"))
    if task in CRAB_PLUS_IMAGE_TASKS:
        image = _path(request, "image_path", source)
        idx = None
        if task in _SLICE_TASKS:
            if request.get("frame_idx") is not None:
                idx = int(request["frame_idx"])
            else:
                try:
                    idx = frame_number(image)
                except ValueError:
                    idx = 0
        return Record(image_path=image, frame_idx=idx, audio=AudioSpec("crab_plus", idx=idx), **common)
    videos = (_path(request, "video_path", source),) + ((_path(request, "video2_path", source),)
                                                        if task == "a2v" else ())
    return Record(videos=videos, num_frames=4 if task in CRAB_PLUS_EMOTION_TASKS else 10,
                  audio=AudioSpec("crab_plus"), **common)


def read_crab_plus_requests(path: str | os.PathLike, *, strict: bool = True) -> ReadResult:
    """Reads a request list (module docstring); a bad entry raises (``strict``) or is collected."""
    shown = os.fspath(path)
    return read_entries(load_json_list(path, shown), shown, lambda where, e: [request_record(e, where)], strict)
