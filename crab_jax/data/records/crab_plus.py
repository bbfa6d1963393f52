"""Readers of Crab+'s ``AVUIE_2`` folder (spec B.3).

``<avuie2>/<task>/{train,test}.json`` (``<avuie2>`` = ``CrabLayout.avuie2``): video / audio
tasks keep file names under ``<avuie2>/<task>/{video,audio}/``, image tasks keep paths
relative to ``<avuie2>/<task>/``. Test records of S4 / MS3 / Ref-AVS get ``mask_path``, the GT
mask the SAM2 scripts read (:func:`crab_plus_gt_mask_path`); ``fields`` keeps what the prompts,
the GT string and the task scorers read.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from crab_jax.data.errors import BadRecordError, as_file_error
from crab_jax.data.records.crab import QA_TASKS
from crab_jax.data.records.record import (AudioSpec, CrabLayout, ReadResult, Record, entry_field, frame_number,
                                          frozen_fields, join_path, load_json_list, read_entries, rebase)

# Crab+ AVUIE_2 tasks (spec B.3), spelled as its folders.
CRAB_PLUS_TASKS = ("a2v", "v2a", "ks", "ucf", "meld", "mer24", "cremad", "mafw", "dfew", "avqa",
                   "avqa_thu", "ave", "unav", "avvp", "ms3", "s4", "ref_avs", "arig", "avcap")
# task -> the annotation field holding its training target.
CRAB_PLUS_TARGET = {
    "a2v": "label", "v2a": "label", "ks": "label", "ucf": "new_label", "meld": "label", "mer24": "label",
    "cremad": "label", "mafw": "label", "dfew": "label", "avqa": "label", "avqa_thu": "label",
    "ave": "label_content", "unav": "label_content", "avvp": "label_content", "avcap": "label_content",
    "s4": "label_content", "ms3": "label_content", "arig": "label_content", "ref_avs": "output",
}
CRAB_PLUS_IMAGE_TASKS = ("s4", "ms3", "ref_avs", "arig")
CRAB_PLUS_EMOTION_TASKS = ("meld", "mer24", "cremad", "mafw", "dfew")
CRAB_PLUS_TRAIN_ONLY = ("mer24", "unav", "avcap")
# Fields the prompt / GT of each task reads (besides media and target).
_CRAB_PLUS_FIELDS = {
    "a2v": ("correct_video",), "v2a": ("correct_audio",), "ks": ("action",), "ucf": ("label",),
    "meld": ("Emotion",), "mer24": (), "cremad": ("emotion",), "mafw": ("emotion",), "dfew": ("emotion",),
    "avqa": ("question", "answer"), "avqa_thu": ("question_text", "multi_choice", "answer"),
    "ave": ("event", "start_time", "end_time"), "unav": (), "avvp": ("event",), "avcap": (),
    "s4": ("a_obj",), "ms3": ("a_obj",), "arig": ("a_obj",), "ref_avs": (),
}
# Fields kept when the entry has them: what the scorers and the original's predictions lines
# carry besides the GT string (question types, ids), per task.
_CRAB_PLUS_OPTIONAL = {
    "avqa": ("type", "video_id", "question_id"),
    "avqa_thu": ("question_type", "question_relation", "video_id", "video_name", "id"),
    "ave": ("vid",), "avvp": ("vid", "filename"), "avcap": ("video_id",),
    "s4": ("vid", "uid"), "ms3": ("vid", "uid"), "ref_avs": ("vid", "uid", "fid", "split"),
}
_CRAB_PLUS_GT_MASK_TASKS = ("s4", "ms3", "ref_avs")


def crab_plus_gt_mask_path(task: str, image_path: str, fid: Any = None) -> str | None:
    """The GT mask file of an S4 / MS3 / Ref-AVS frame by the SAM2 scripts' rules (spec B.6), or
    None when ``image_path`` does not have the layout they assume.

    S4 / MS3: ``/frames/`` -> ``/labels_rgb/``, ``.jpg`` -> ``.png``. Ref-AVS: ``/media/`` ->
    ``/gt_mask/``, ``.jpg`` -> ``.png``, ``/frames/`` -> ``/fid_{fid}/0000`` (frame ``3.jpg`` ->
    ``fid_{fid}/00003.png``), applied in that order like the script's ``str.replace`` chain.
    """
    path = str(image_path)
    if task in ("s4", "ms3"):
        return path.replace("/frames/", "/labels_rgb/").replace(".jpg", ".png") if "/frames/" in path else None
    if task == "ref_avs":
        if fid is None or "/media/" not in path or "/frames/" not in path:
            return None
        return path.replace("/media/", "/gt_mask/").replace(".jpg", ".png").replace("/frames/", f"/fid_{fid}/0000")
    raise ValueError(f"task {task!r} has no GT mask rule; known: {_CRAB_PLUS_GT_MASK_TASKS}")


def _crab_plus_gt(task: str, f: Mapping[str, Any]) -> str | None:
    if task == "a2v":
        return f"<answer>{f['correct_video']}</answer>."
    if task == "v2a":
        return f"<answer>{f['correct_audio']}</answer>."
    if task == "ks":
        return f"<answer>{f['action']}</answer>"
    if task == "ucf":
        return f"<answer>{str(f['label']).lower()}</answer>"
    if task == "meld":
        return f"<answer>{f['Emotion']}</answer>."
    if task in ("cremad", "mafw", "dfew"):
        return f"<answer>{f['emotion']}</answer>."
    if task in ("avqa", "avqa_thu"):
        return str(f["answer"])
    if task == "ave":
        return f"event:{f['event']} start_time:{f['start_time']} end_time:{f['end_time']}"
    if task == "avvp":
        return str(f["event"])
    if task in ("s4", "ms3"):
        return f"The object making the sound in the video is {f['a_obj']}."
    if task == "ref_avs":
        return str(f["object"])
    if task == "arig":
        (x1, y1), (x2, y2) = f["top_left"], f["bottom_right"]
        return f"The sounding object is {f['a_obj']}. Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>."
    return None


def _build_crab_plus(task, mode, root, where, e):
    f = {k: entry_field(e, k, where) for k in _CRAB_PLUS_FIELDS[task]}
    f.update({k: e[k] for k in _CRAB_PLUS_OPTIONAL.get(task, ()) if e.get(k) is not None})
    if task in CRAB_PLUS_IMAGE_TASKS:
        image_key = "image_path" if mode == "train" else "visual_path"
        image = join_path(root, rebase(str(entry_field(e, image_key, where)), 99))
        audio = (join_path(root, rebase(str(entry_field(e, "audio_path", where)), 99)),)
        if task == "s4" and mode == "train":
            idx = 0  # the original fixes the audio segment of S4 training at 0
        elif task == "ref_avs" and mode == "train":
            idx = int(entry_field(e, "idx", where))
        elif task == "arig" and mode == "train":
            idx = frame_number(image)
        else:
            idx = int(entry_field(e, "frame_idx", where))
        if task == "ref_avs":
            f["description" if mode == "train" else "object"] = str(
                entry_field(e, "description" if mode == "train" else "object", where))
        if task == "arig" and mode == "test":
            f["top_left"], f["bottom_right"] = entry_field(e, "top_left", where), entry_field(e, "bottom_right", where)
        media = dict(image_path=image, audios=audio, frame_idx=idx, audio=AudioSpec("crab_plus", idx=idx))
        if mode == "test" and task in _CRAB_PLUS_GT_MASK_TASKS:
            media["mask_path"] = crab_plus_gt_mask_path(task, image, f.get("fid"))
    else:
        if task == "a2v":
            videos = tuple(join_path(root, "video", str(entry_field(e, k, where))) for k in ("video1_path", "video2_path"))
            audios = (join_path(root, "audio", str(entry_field(e, "audio_path", where))),)
        elif task == "v2a":
            videos = (join_path(root, "video", str(entry_field(e, "video_path", where))),)
            audios = tuple(join_path(root, "audio", str(entry_field(e, k, where))) for k in ("audio1_path", "audio2_path"))
        else:
            videos = (join_path(root, "video", str(entry_field(e, "video_path", where))),)
            audios = (join_path(root, "audio", str(entry_field(e, "audio_path", where))),)
        media = dict(videos=videos, audios=audios, audio=AudioSpec("crab_plus"),
                     num_frames=4 if task in CRAB_PLUS_EMOTION_TASKS else 10)
    if mode == "train":
        kw = dict(answer=str(entry_field(e, CRAB_PLUS_TARGET[task], where)))
    else:
        # A test entry that also holds the training target (the synthetic set's) carries it, so a
        # held-out record can be trained on; gt stays the test GT string.
        target = e.get(CRAB_PLUS_TARGET[task])
        kw = dict(gt=_crab_plus_gt(task, f), answer=None if target is None else str(target))
    question = f.get("question") or f.get("question_text")
    return [Record(family="crab_plus", task=task, mode=mode, split=str(e.get("split", mode)), source=where,
                   question=None if question is None else str(question), fields=frozen_fields(f), **media, **kw)]


def read_crab_plus_task(task: str, mode: str, data_root: str | os.PathLike, *,
                        layout: CrabLayout = CrabLayout(), strict: bool = True) -> ReadResult:
    """Reads ``<avuie2>/<task>/<mode>.json`` of Crab+ (spec B.3)."""
    if task not in CRAB_PLUS_TASKS:
        raise ValueError(f"unknown Crab+ task {task!r}; known: {CRAB_PLUS_TASKS}")
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if mode == "test" and task in CRAB_PLUS_TRAIN_ONLY:
        raise ValueError(f"Crab+ task {task!r} is train-only")
    root = join_path(layout.avuie2, task)
    rel = join_path(root, f"{mode}.json")
    entries = load_json_list(os.path.join(os.fspath(data_root), rel), rel)
    return read_entries(entries, rel, lambda where, e: _build_crab_plus(task, mode, root, where, e), strict)


def read_crab_plus_records(data_root: str | os.PathLike, tasks: Sequence[str], mode: str = "train", *,
                           layout: CrabLayout = CrabLayout(), seed: int = 0) -> tuple[list[Record], list[BadRecordError]]:
    """Every AVUIE_2 record of ``tasks`` in ``mode`` (``train`` / ``test``), bad entries collected
    (Crab+'s ``read_records`` hook, as ``read_records`` of :mod:`~crab_jax.data.records.select` is Crab's).

    A whole annotation file that is missing or unreadable is one collected
    :class:`~crab_jax.data.errors.BadFileError`; every collected error names its task
    (``.task``); an unknown task raises ValueError; in mode ``test`` the train-only tasks (no test file) are skipped.
    A test entry that also holds its task's training target field (:data:`CRAB_PLUS_TARGET`; the
    synthetic dataset's test rows do) carries it as the record's ``answer``, so a held-out
    record can be trained on; ``gt`` stays the test GT string. ``seed`` is unused (no AVUIE_2
    reader draws at random); it is the hook's signature.
    """
    records, errors = [], []
    for task in tasks:
        if task in QA_TASKS:
            raise ValueError(f"data.tasks: {task!r} is a synthetic Crab-only task (AV-UIE layout, model.family="
                             f"'crab'); Crab+ reads the AVUIE_2 tasks {CRAB_PLUS_TASKS}")
        if task not in CRAB_PLUS_TASKS:
            raise ValueError(f"data.tasks: unknown Crab+ task {task!r}; known: {CRAB_PLUS_TASKS}")
        if mode == "test" and task in CRAB_PLUS_TRAIN_ONLY:
            continue
        try:
            res = read_crab_plus_task(task, mode, data_root, layout=layout, strict=False)
        except BadRecordError as e:  # a whole annotation file missing / unreadable
            errors.append(as_file_error(e, task))
            continue
        records += res.records
        errors += [e.with_task(task) for e in res.errors]
    return records, errors
