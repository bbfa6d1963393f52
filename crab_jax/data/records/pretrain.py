"""Readers of Crab's pretraining sets (spec A.4): LLaVA image / Valley video captions,
AudioCaps and LVIS segmentation.

Folder layout under the data root (``<llava>`` = ``CrabLayout.llava`` etc.)::

  <llava>/llava_image_.json         [{image, conversations:[{value}, {value}]}]
  <llava>/valid_valley_.json        [{video, conversations}]
  <audiocaps>/{train,val,test}.json [{audiocap_id, start_time, caption}]; data/<id>.wav
  <lvis>/train_samples.json         [{id, image_id, category_id, bbox, name, def, area}]
  <lvis>/train2017/<image_id:012d>.jpg, <lvis>/binary_mask/<id>.png
"""

from __future__ import annotations

import os
from typing import Mapping

from crab_jax.data.errors import BadFileError, BadRecordError
from crab_jax.data.records.crab import mask_tokens
from crab_jax.data.records.record import (AudioSpec, CrabLayout, ReadResult, Record, entry_field, frozen_fields,
                                          join_path, load_json_list, read_entries, rebase)

# Crab pretraining sets (spec A.4).
PRETRAIN_TASKS = ("image_caption", "video_caption", "audio_caption", "lvis_seg")
PRETRAIN_VIDEO_FRAMES = 8   # ``video_frame_nums`` of video pretraining


def _with_period(text: str) -> str:
    return text if text[-1:] in (".", "!", "?") else text + "."


def _build_llava(kind, root, where, e):
    media = str(entry_field(e, kind, where))
    conv = entry_field(e, "conversations", where)
    if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(c, Mapping) and "value" in c for c in conv[:2]):
        raise BadRecordError(where, "field 'conversations' needs two turns with a 'value'")
    question = str(conv[0]["value"]).replace(f"<{kind}>", "").replace("\n", "")
    answer = str(conv[1]["value"])
    if not answer:
        raise BadRecordError(where, "empty answer turn")
    common = dict(family="crab", mode="train", split="train", source=where, question=question,
                  answer=_with_period(answer))
    if kind == "image":
        return [Record(task="image_caption", image_path=join_path(root, rebase(media, 99)), **common)]
    return [Record(task="video_caption", videos=(join_path(root, rebase(media, 99)),),
                   num_frames=PRETRAIN_VIDEO_FRAMES, **common)]


def _build_audiocaps(mode, root, where, e, skip_ids):
    cap_id = str(entry_field(e, "audiocap_id", where))
    if cap_id in skip_ids:
        return []
    caption = str(entry_field(e, "caption", where))
    kw = dict(answer=caption) if mode == "train" else dict(gt=caption)
    return [Record(family="crab", task="audio_caption", mode=mode, split=mode, source=where,
                   audios=(join_path(root, "data", f"{cap_id}.wav"),), audio=AudioSpec("seconds"),
                   fields=frozen_fields({"start_time": e.get("start_time")}), **kw)]


def _build_lvis(root, where, e, min_area):
    if float(entry_field(e, "area", where)) < min_area:
        return []
    image_id, mid = int(entry_field(e, "image_id", where)), entry_field(e, "id", where)
    name, definition = str(entry_field(e, "name", where)), str(entry_field(e, "def", where))
    return [Record(family="crab", task="lvis_seg", mode="train", split="train", source=where,
                   image_path=join_path(root, "train2017", f"{image_id:012d}.jpg"),
                   mask_path=join_path(root, "binary_mask", f"{mid}.png"),
                   answer=f"It is <mask_start>{mask_tokens()}<mask_end>",
                   fields=frozen_fields({"name": name, "def": definition}))]


def read_pretrain_task(task: str, data_root: str | os.PathLike, *, mode: str = "train",
                       layout: CrabLayout = CrabLayout(), lvis_min_area: float = 1000.0,
                       strict: bool = True) -> ReadResult:
    """Reads one Crab pretraining set (spec A.4). AudioCaps trains on train.json + val.json
    (id ``'12347'`` of train.json skipped, as in the original) and tests on test.json.

    An annotation file that cannot be read raises :class:`BadFileError`; when the task reads
    several files and ``strict`` is off, it is collected in ``ReadResult.errors`` instead and
    the other files' records are kept."""
    if task not in PRETRAIN_TASKS:
        raise ValueError(f"unknown pretraining task {task!r}; known: {PRETRAIN_TASKS}")
    root_dir = os.fspath(data_root)
    if task in ("image_caption", "video_caption"):
        kind = "image" if task == "image_caption" else "video"
        rel = join_path(layout.llava, "llava_image_.json" if kind == "image" else "valid_valley_.json")
        files = [(rel, lambda where, e, k=kind: _build_llava(k, layout.llava, where, e))]
    elif task == "audio_caption":
        names = [("train.json", {"12347"}), ("val.json", set())] if mode == "train" else [("test.json", set())]
        files = [(join_path(layout.audiocaps, n), lambda where, e, s=s: _build_audiocaps(mode, layout.audiocaps, where, e, s))
                 for n, s in names]
    else:
        files = [(join_path(layout.lvis, "train_samples.json"),
                  lambda where, e: _build_lvis(layout.lvis, where, e, lvis_min_area))]
    result = ReadResult([], [])
    for rel, build in files:
        try:
            entries = load_json_list(os.path.join(root_dir, rel), rel)
        except BadFileError as e:
            if strict or len(files) == 1:
                raise
            result.errors.append(e)  # one unreadable file of several: the others' records are kept
            continue
        part = read_entries(entries, rel, build, strict)
        result.records += part.records
        result.errors += part.errors
    return result
