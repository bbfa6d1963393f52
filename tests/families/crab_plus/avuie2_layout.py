"""A test-made AV-UIE v2 data root with every task of the release over ``shared/media``.

``write_avuie2_layout(root, media)`` writes ``AVUIE_2/<task>/{train,test}.json`` (one entry per
task and split; Ref-AVS: one test entry per split ``test_s`` / ``test_u`` / ``test_n``) with
every field spec B.3 names (:func:`tests.families.crab_plus.test_prompts.entry_for`), and links
the media where the readers look: video tasks ``<task>/video/`` + ``<task>/audio/``, image tasks
in the AVSBench / Ref-AVS layouts whose GT masks spec B.6's path rules find.
"""

from __future__ import annotations

import json
import os
import pathlib

from crab_jax.data.records.crab_plus import CRAB_PLUS_IMAGE_TASKS, CRAB_PLUS_TASKS, CRAB_PLUS_TRAIN_ONLY
from tests.families.crab_plus.test_prompts import B3, entry_for

CLIPS = {"clip_a": "ave/-67UNKFmRLk", "clip_b": "avvp/6aV6c8mY0lg"}
SEG_ANSWER = ("The object making the sound in the video is dog. Its bounding box is [30,40,180,200] and three "
              "pixel points are [60,90],[100,120],[150,170].")
# Image tasks: (frame in shared/media, its AVUIE_2 path, audio, GT mask path or None, frame index).
IMAGES = {
    "s4": ("s4/0.jpg", "v1s/uid0/frames/0.jpg", "v1s/uid0/audio.wav", "v1s/uid0/labels_rgb/0.png", 0),
    "ms3": ("ms3/1.jpg", "v1m/uid1/frames/1.jpg", "v1m/uid1/audio.wav", "v1m/uid1/labels_rgb/1.png", 1),
    "arig": ("arig/1.jpg", "v1s/uid2/frames/1.jpg", "v1s/uid2/audio.wav", None, 1),
    "ref_avs": ("s4/0.jpg", "media/vid0/frames/0.jpg", "media/vid0/audio.wav", "gt_mask/vid0/fid_1/00000.png", 0),
}
IMAGE_SOURCES = {"s4": ("s4/audio.wav", "s4/0.png"), "ms3": ("ms3/audio.wav", "ms3/1.png"),
                 "arig": ("arig/audio.wav", None), "ref_avs": ("s4/audio.wav", "s4/0.png")}
REF_SPLITS = ("test_s", "test_u", "test_n")
# Fields whose format the scorers read (the rest: entry_for's placeholder values).
VIDEO_FIELDS = {"a2v": {"correct_video": 2}, "v2a": {"correct_audio": 1}, "avqa": {"type": '["Audio", "Counting"]'},
                "ave": {"event": "Male speech, man speaking"},
                "avvp": {"event": "<audio_event>Speech,(0 8)</audio_event><visual_event>Speech,(2 6)</visual_event>"}}


def _link(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def _video_task_media(task_dir: pathlib.Path, media: pathlib.Path) -> None:
    for name, stem in CLIPS.items():
        _link(media / f"{stem}.mp4", task_dir / "video" / f"{name}.mp4")
        _link(media / f"{stem}.mp3", task_dir / "audio" / f"{name}.mp3")


def _video_paths(task: str) -> dict:
    if task == "a2v":
        return {"video1_path": "clip_a.mp4", "video2_path": "clip_b.mp4", "audio_path": "clip_a.mp3"}
    if task == "v2a":
        return {"video_path": "clip_a.mp4", "audio1_path": "clip_a.mp3", "audio2_path": "clip_b.mp3"}
    return {"video_path": "clip_b.mp4" if task == "avvp" else "clip_a.mp4",
            "audio_path": "clip_b.mp3" if task == "avvp" else "clip_a.mp3"}


def _image_entries(task: str, task_dir: pathlib.Path, media: pathlib.Path) -> tuple[dict, list[dict]]:
    frame_src, frame, audio, mask, idx = IMAGES[task]
    audio_src, mask_src = IMAGE_SOURCES[task]
    _link(media / frame_src, task_dir / frame)
    _link(media / audio_src, task_dir / audio)
    if mask:
        _link(media / mask_src, task_dir / mask)
    target = B3[task].target
    train_answer = {"ref_avs": "<answer>true</answer> " + SEG_ANSWER,
                    "arig": "The sounding object is dog. Its coordinates are <obj>(30,40)(180,200)</obj>."}.get(task,
                                                                                                               SEG_ANSWER)
    common = {"audio_path": audio, "frame_idx": idx, "a_obj": "dog", "idx": idx, "fid": 1}
    train = entry_for(task, "train", image_path=frame, **{target: train_answer}, **common)
    splits = REF_SPLITS if task == "ref_avs" else (None,)
    tests = [entry_for(task, "test", visual_path=frame, top_left=[30, 40], bottom_right=[180, 200],
                       **({"split": s} if s else {}), **common) for s in splits]
    return train, tests


def write_avuie2_layout(root: pathlib.Path, media: pathlib.Path, tasks=CRAB_PLUS_TASKS) -> dict[str, dict]:
    """Writes the layout; returns ``{task: {"train": [entries], "test": [entries]}}``."""
    root, media = pathlib.Path(root), pathlib.Path(media)
    written = {}
    for task in tasks:
        task_dir = root / "AVUIE_2" / task
        if task in CRAB_PLUS_IMAGE_TASKS:
            train, tests = _image_entries(task, task_dir, media)
        else:
            _video_task_media(task_dir, media)
            given = {**_video_paths(task), **VIDEO_FIELDS.get(task, {})}
            train = entry_for(task, "train", **given)
            tests = [entry_for(task, "test", **given)]
        splits = {"train": [train]}
        if task not in CRAB_PLUS_TRAIN_ONLY:
            splits["test"] = tests
        for split, entries in splits.items():
            (task_dir / f"{split}.json").write_text(json.dumps(entries, indent=1))
        written[task] = splits
    return written
