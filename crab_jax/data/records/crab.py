"""Readers of Crab's AV-UIE fine-tuning annotations (spec A.3), and Crab's target-text
conventions they share with the other Crab readers (:data:`ORDINALS`, :func:`mask_tokens`).

Folder layout under the data root (``<avs>`` = ``CrabLayout.avs`` etc.; see
:mod:`crab_jax.data.records.record` for the path rules)::

  <avqa>/valid_train_samples.json   [{video_id, question_id, type, video_path, audio_path,
  <avqa>/test_samples.json            question, answer}]   video_path/audio_path relative to
  <avqa>/converted_label/<question_id>.txt     <avqa> (train target text)
  <synthetic_qa>/<task>/...         the same files as <avqa>, one folder per task of QA_TASKS
  <ave>/valid_train_samples.json    [{event, vid, start_time, end_time}]
  <ave>/test_samples.json
  <ave>/AVE/<vid>.mp4, <ave>/audio_data/<vid>.mp3, <ave>/converted_label/<vid>.txt
  <avvp>/train_samples.json         [{filename, vid, event, label}]  (no label -> skipped)
  <avvp>/test_samples.json          [{filename, vid, event}]
  <avvp>/llp_videos/<vid>.mp4, <avvp>/audio_data/<vid>.mp3
  <valor>/train_samples.json, <valor>/val_samples.json     [{video_id, desc}]
  <valor>/video_data/<video_id>.mp4, <valor>/audio_data/<video_id>.mp3
  <avs>/s4_samples.json, ms3_samples.json, avss_samples.json
                                    [{vid, uid, s_min, s_sec, a_obj, split, label}]
  <avs>/v1s/<uid>/{audio.wav, frames/<i>.jpg, labels_semantic/<i>.png}   (s4, i < 5)
  <avs>/v1m/<uid>/...                                                     (ms3, i < 5)
  <avs>/v2/<uid>/{audio.wav, frames/<i>.jpg, labels_rgb/<i>.png}         (avss, i < 10)
  <avs>/v1s_grounding_samples.json  [{split, audio_path, frame_path, mask_path, top_left,
                                      bottom_right, a_obj}]   paths relative to <avs>
  <ref_avs>/metadata.csv            rows vid,uid,split,fid,exp (header row tolerated)
  <ref_avs>/media/<vid>/{audio.wav, frames/<i>.jpg}, <ref_avs>/gt_mask/<vid>/fid_<fid>/0000<i>.png
"""

from __future__ import annotations

import csv
import os
import random
from typing import Mapping

from crab_jax.data.errors import BadFileError, BadRecordError
from crab_jax.data.records.record import (AudioSpec, CrabLayout, ReadResult, Record, entry_field, frame_number,
                                          frozen_fields, join_path, load_json_list, read_entries, rebase)

# Crab fine-tuning tasks (spec A.3), with the spelling the original's ``task_name`` uses.
CRAB_TASKS = ("avqa", "ave", "avvp", "arig", "avcap", "s4", "ms3", "avss", "ref-avs")
# Short-answer questions about a clip in the AVQA format (same files, prompt, target and
# exact-match scoring as AVQA), each task in its own folder ``<synthetic_qa>/<task>/``: the
# synthetic dataset's transfer-study tasks (no such real dataset; Crab only, the AV-UIE layout).
QA_TASKS = ("audcls", "viscls", "count", "where", "match", "when")
AVQA_FORMAT_TASKS = ("avqa",) + QA_TASKS
READ_TASKS = CRAB_TASKS + QA_TASKS          # what :func:`read_crab_task` reads
ORDINALS = ("first", "second", "third", "fourth", "fifth",
            "sixth", "seventh", "eighth", "ninth", "tenth")
VIDEO_FRAMES = 10           # frames sampled from a fine-tuning video (spec A.2.1)


# MASK6 of the spec: the mask tokens segmentation targets end with (image_scale_nums 2 x
# token_nums_per_scale 3). The one home of these strings; Crab's vocabulary takes them from here.
MASK_TOKENS = tuple(f"<mask_{i}>" for i in range(6))


def mask_tokens(n: int = len(MASK_TOKENS)) -> str:
    """``<mask_0>...<mask_{n-1}>``: the mask tokens of segmentation targets, as one string."""
    return "".join(MASK_TOKENS[:n])


_ANNOTATION = {  # task -> (layout field, train file, test file)
    "avqa": ("avqa", "valid_train_samples.json", "test_samples.json"),
    "ave": ("ave", "valid_train_samples.json", "test_samples.json"),
    "avvp": ("avvp", "train_samples.json", "test_samples.json"),
    "avcap": ("valor", "train_samples.json", "val_samples.json"),
    "arig": ("avs", "v1s_grounding_samples.json", "v1s_grounding_samples.json"),
    "s4": ("avs", "s4_samples.json", "s4_samples.json"),
    "ms3": ("avs", "ms3_samples.json", "ms3_samples.json"),
    "avss": ("avs", "avss_samples.json", "avss_samples.json"),
    "ref-avs": ("ref_avs", "metadata.csv", "metadata.csv"),
    **{t: ("synthetic_qa", "valid_train_samples.json", "test_samples.json") for t in QA_TASKS},
}


def task_root(task: str, layout: CrabLayout = CrabLayout()) -> str:
    """The folder of a task's annotation files, relative to the data root (its entries' media
    paths are relative to it): the dataset's folder, below it ``<task>/`` for :data:`QA_TASKS`."""
    folder = getattr(layout, _ANNOTATION[task][0])
    return join_path(folder, task) if task in QA_TASKS else folder


def annotation_path(task: str, mode: str, layout: CrabLayout = CrabLayout()) -> str:
    """The annotation file of a Crab task, relative to the data root."""
    _, train, test = _ANNOTATION[task]
    return join_path(task_root(task, layout), train if mode == "train" else test)


def _av_clip(task, mode, split, where, root, vid, video_dir, audio_dir, video_ext=".mp4",
             audio_ext=".mp3", **kw) -> Record:
    return Record(family="crab", task=task, mode=mode, split=split, source=where,
                  videos=(join_path(root, video_dir, vid + video_ext),), num_frames=VIDEO_FRAMES,
                  audios=(join_path(root, audio_dir, vid + audio_ext),), audio=AudioSpec("clip", 10), **kw)


def _build_avqa(task, mode, root, where, e):
    qid = entry_field(e, "question_id", where)
    video = rebase(str(entry_field(e, "video_path", where)), 2)
    audio = rebase(str(entry_field(e, "audio_path", where)), 2)
    question = str(entry_field(e, "question", where))
    fields = {"video_id": e.get("video_id"), "question_id": qid, "type": e.get("type")}
    if mode == "train":
        kw = dict(answer_file=join_path(root, "converted_label", f"{qid}.txt"))
    else:
        kw = dict(gt=str(entry_field(e, "answer", where)))
    return [Record(family="crab", task=task, mode=mode, split=mode, source=where,
                   videos=(join_path(root, video),), num_frames=VIDEO_FRAMES, audios=(join_path(root, audio),),
                   audio=AudioSpec("avqa", 60), question=question, fields=frozen_fields(fields), **kw)]


def _build_ave(mode, root, where, e):
    vid = str(entry_field(e, "vid", where))
    fields = {k: entry_field(e, k, where) for k in ("event", "start_time", "end_time")}
    if mode == "train":
        kw = dict(answer_file=join_path(root, "converted_label", vid + ".txt"))
    else:
        kw = dict(gt=f"event:{fields['event']} start_time:{fields['start_time']} end_time:{fields['end_time']}")
    return [_av_clip("ave", mode, mode, where, root, vid, "AVE", "audio_data", fields=frozen_fields(fields), **kw)]


AVVP_TAG_RENAMES = (("<audio>", "<audio_event>"), ("</audio>", "</audio_event>"),
                    ("<visual>", "<visual_event>"), ("</visual>", "</visual_event>"))


def rename_avvp_tags(label: str) -> str:
    """AVVP targets: ``<audio>``/``<visual>`` tags renamed so they cannot hit the placeholder."""
    for old, new in AVVP_TAG_RENAMES:
        label = label.replace(old, new)
    return label


def _build_avvp(mode, root, where, e):
    vid = str(entry_field(e, "vid", where))
    event = entry_field(e, "event", where)
    if mode == "train":
        label = e.get("label") if isinstance(e, Mapping) else None
        if label is None:  # the original skips unlabelled training entries
            return []
        kw = dict(answer=rename_avvp_tags(str(label)))
    else:  # the original's GT is the raw event; as a target text (held-out prompts are built from
        # one, then cut) its tags must not hit the <audio>/<visual> placeholders, as in training
        kw = dict(gt=str(event), answer=rename_avvp_tags(str(event)))
    return [_av_clip("avvp", mode, mode, where, root, vid, "llp_videos", "audio_data",
                     fields=frozen_fields({"event": event, "filename": e.get("filename")}), **kw)]


def _build_avcap(mode, root, where, e):
    video_id = str(entry_field(e, "video_id", where))
    desc = str(entry_field(e, "desc", where))
    kw = dict(answer=desc) if mode == "train" else dict(gt=desc)
    return [_av_clip("avcap", mode, "train" if mode == "train" else "val", where, root, video_id,
                     "video_data", "audio_data", **kw)]


def _build_arig(mode, root, where, e):
    split = str(entry_field(e, "split", where))
    if split != ("train" if mode == "train" else "test"):
        return []
    (x1, y1), (x2, y2) = entry_field(e, "top_left", where), entry_field(e, "bottom_right", where)
    if x1 == 1000:  # sentinel: no sounding object
        return []
    frame = rebase(str(entry_field(e, "frame_path", where)), 4)
    a_obj = str(entry_field(e, "a_obj", where))
    fields = {"a_obj": a_obj, "top_left": (x1, y1), "bottom_right": (x2, y2)}
    if mode == "train":
        kw = dict(answer=(f"The sounding object is {a_obj}. Its coordinate of top left corner is "
                          f"({x1},{y1}) and coordinate of bottom right corner is ({x2},{y2})"))
    else:
        kw = dict(gt=f"The sounding object is {a_obj}. Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>.")
    mask = e.get("mask_path")
    return [Record(family="crab", task="arig", mode=mode, split=split, source=where,
                   image_path=join_path(root, frame), audios=(join_path(root, rebase(str(entry_field(e, "audio_path", where)), 3)),),
                   audio=AudioSpec("clip", 5), mask_path=join_path(root, rebase(str(mask), 4)) if mask else None,
                   frame_idx=frame_number(frame), fields=frozen_fields(fields), **kw)]


def segmentation_target(task: str, mode: str, a_obj: str, idx: int, exp: str = "", obj: str = "") -> str:
    """The target text of the AVS tasks (spec A.3.6-A.3.9), without ``</s>``."""
    masks = f"<mask_start>{mask_tokens()}<mask_end>"
    th = ORDINALS[idx]
    if task == "ref-avs":
        if mode == "test":
            return f"{exp} is {masks}"
        return f"At the {th} second in the video, {exp} is {obj}. Its mask is {masks}"
    if task == "avss" and mode == "test":
        return f"The category of the sound-making object and its mask image are {masks}"
    if task == "ms3" and mode == "test":  # quirk: every test frame says "third", and "in"
        return f"The object making the sound in the video is {a_obj}. The mask of the object that makes the sound in the third second is {masks}"
    return f"The object making the sound in the video is {a_obj}. The mask of the object that makes the sound at the {th} second is {masks}"


_AVS_SUBSETS = {"s4": ("v1s", 5, "labels_semantic"), "ms3": ("v1m", 5, "labels_semantic"),
                "avss": ("v2", 10, "labels_rgb")}


def _build_avs(task, mode, root, where, e, rng: random.Random):
    split = str(entry_field(e, "split", where))
    if split != ("train" if mode == "train" else "test"):
        return []
    uid = str(entry_field(e, "uid", where))
    a_obj = str(entry_field(e, "a_obj", where))
    subset, n, mask_dir = _AVS_SUBSETS[task]
    base = join_path(root, subset, uid)
    frames = tuple(join_path(base, "frames", f"{i}.jpg") for i in range(n))
    audio_path = (join_path(base, "audio.wav"),)
    if mode == "train":
        # S4 trains on frame 0 only (only it has a mask), MS3 on each frame, AVSS on one frame
        # drawn once at construction.
        idxs = {"s4": [0], "ms3": list(range(n)), "avss": [rng.randint(0, n - 1)]}[task]
    else:
        idxs = list(range(n))
    out = []
    for i in idxs:
        target = segmentation_target(task, mode, a_obj, i)
        if task == "avss" and mode == "test":  # image + one 1-s segment (clip padded to 1 s)
            media = dict(audio=AudioSpec("frame", 10, i, pad_to_second=True))
        else:
            media = dict(frame_paths=frames, audio=AudioSpec("clip", n))
        kw = dict(answer=target) if mode == "train" else dict(gt=target)
        out.append(Record(family="crab", task=task, mode=mode, split=split, source=where,
                          image_path=frames[i], audios=audio_path, mask_path=join_path(base, mask_dir, f"{i}.png"),
                          frame_idx=i, fields=frozen_fields({"a_obj": a_obj, "uid": uid, "vid": e.get("vid")}),
                          **media, **kw))
    return out


REF_AVS_SPLITS = ("train", "test_s", "test_u", "test_n")


def _build_ref_avs(mode, root, where, row, rng: random.Random, test_splits: tuple[str, ...]):
    if not isinstance(row, (list, tuple)) or len(row) != 5:
        raise BadRecordError(where, f"expected 5 columns vid,uid,split,fid,exp, found {row!r}")
    _, uid, split, fid, exp = row
    if split not in (("train",) if mode == "train" else test_splits):
        return []  # also drops the header row
    parts = uid.rsplit("_", 2)
    if len(parts) != 3:
        raise BadRecordError(where, f"uid {uid!r} is not '<vid>_<obj>_<n>'")
    vid, obj = parts[0], parts[1]
    frames = tuple(join_path(root, "media", vid, "frames", f"{i}.jpg") for i in range(10))
    idxs = [rng.randint(0, 9)] if mode == "train" else list(range(10))
    out = []
    for i in idxs:
        target = segmentation_target("ref-avs", mode, "", i, exp=exp, obj=obj)
        kw = dict(answer=target) if mode == "train" else dict(gt=target)
        out.append(Record(family="crab", task="ref-avs", mode=mode, split=split, source=where,
                          frame_paths=frames, image_path=frames[i], audios=(join_path(root, "media", vid, "audio.wav"),),
                          audio=AudioSpec("clip", 10), mask_path=join_path(root, "gt_mask", vid, f"fid_{fid}", f"0000{i}.png"),
                          frame_idx=i, fields=frozen_fields({"exp": exp, "obj": obj, "uid": uid, "vid": vid, "fid": fid}),
                          **kw))
    return out


def _read_csv_rows(path: str, shown: str) -> list:
    if not os.path.isfile(path):
        raise BadFileError(shown, "annotation file not found")
    rows: list = []
    with open(path, encoding="utf-8", newline="") as f:
        try:
            rows.extend(csv.reader(f))
        except (csv.Error, UnicodeDecodeError) as e:  # rows holds the ones read before
            raise BadFileError(shown, f"unreadable CSV ({e}) at row {len(rows) + 1}", line=len(rows) + 1,
                               entries=len(rows)) from e
    return rows


def read_crab_task(task: str, mode: str, data_root: str | os.PathLike, *, layout: CrabLayout = CrabLayout(),
                   seed: int = 0, ref_avs_test_split: str | None = None, strict: bool = True) -> ReadResult:
    """Reads one Crab fine-tuning task's annotations (spec A.3).

    Args:
      task: one of :data:`READ_TASKS` (:data:`CRAB_TASKS`, or :data:`QA_TASKS`: read as AVQA).
      mode: ``"train"`` or ``"test"``.
      seed: seeds the one-off random frame of AVSS / Ref-AVS training records (the original
        draws it unseeded at construction; here it is reproducible).
      ref_avs_test_split: ``test_s`` (seen), ``test_u`` (unseen) or ``test_n`` (null); None
        (default): all three, in the file's row order (each record's ``split`` says which).
      strict: raise on the first bad entry; otherwise collect it in ``ReadResult.errors``.
    Raises:
      BadFileError: missing / truncated annotation file (always); BadRecordError: bad entry (strict).
    """
    if task not in READ_TASKS:
        raise ValueError(f"unknown Crab task {task!r}; known: {READ_TASKS}")
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test' for annotation files, got {mode!r}")
    if task == "ref-avs" and ref_avs_test_split not in REF_AVS_SPLITS[1:] + (None,):
        raise ValueError(f"ref_avs_test_split must be one of {REF_AVS_SPLITS[1:]} or None (all), "
                         f"got {ref_avs_test_split!r}")
    rel = annotation_path(task, mode, layout)
    root = task_root(task, layout)
    path = os.path.join(os.fspath(data_root), rel)
    rng = random.Random(f"{seed}:{task}")
    if task == "ref-avs":
        rows = _read_csv_rows(path, rel)
        splits = REF_AVS_SPLITS[1:] if ref_avs_test_split is None else (ref_avs_test_split,)
        return read_entries(rows, rel, lambda where, r: _build_ref_avs(mode, root, where, r, rng, splits), strict)
    entries = load_json_list(path, rel)
    if task in _AVS_SUBSETS:
        return read_entries(entries, rel, lambda where, e: _build_avs(task, mode, root, where, e, rng), strict)
    if task in AVQA_FORMAT_TASKS:
        return read_entries(entries, rel, lambda where, e: _build_avqa(task, mode, root, where, e), strict)
    build = {"ave": _build_ave, "avvp": _build_avvp, "avcap": _build_avcap, "arig": _build_arig}[task]
    return read_entries(entries, rel, lambda where, e: build(mode, root, where, e), strict)
