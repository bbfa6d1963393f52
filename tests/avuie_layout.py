"""A small AV-UIE root for end-to-end tests: test records of all nine Crab tasks whose media
are links to the original's example files (``../shared/media``).

:func:`write_avuie_root` writes the annotation files and folders the AV-UIE readers expect
(:mod:`crab_jax.data.records.crab`) under ``root``; every media file is a symbolic link to a
file of the media folder (a task whose media the folder lacks borrows another task's: AVQA
and captioning use the AVE / AVVP videos, ARIG and Ref-AVS the S4 frames). Ref-AVS has one
row in each of its test splits (seen, unseen, null; the null split's GT masks are empty).
It returns what it wrote: the number of test records each task's reader should give
(one per video / question / box, one per frame of an AVSBench clip or Ref-AVS row).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from PIL import Image

from crab_jax.data.records.crab import CRAB_TASKS
from crab_jax.data.records.record import CrabLayout

# Frames per AVSBench clip / Ref-AVS video in the layout (AVSBench v1s / v1m: 5, v2 and Ref-AVS: 10).
AVS_FRAMES = {"s4": 5, "ms3": 5, "avss": 10}
REF_AVS_FRAMES = 10
REF_AVS_TEST_SPLITS = ("test_s", "test_u", "test_n")
AVQA_TYPE = '["Audio", "Counting"]'


def _first(media: pathlib.Path, folder: str, suffix: str) -> pathlib.Path:
    found = sorted((media / folder).glob(f"*{suffix}"))
    if not found:
        raise FileNotFoundError(f"{media / folder}: no *{suffix} file (the end-to-end layout links to it)")
    return found[0]


def _link(target: pathlib.Path, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.resolve(), path)


def _write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _empty_mask_like(mask: pathlib.Path, path: pathlib.Path) -> None:
    with Image.open(mask) as img:
        size = img.size
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(path)


def write_avuie_root(root: pathlib.Path, media: pathlib.Path, layout: CrabLayout = CrabLayout()) -> dict[str, int]:
    """Writes the layout under ``root``; returns ``{task: test records}`` for every Crab task."""
    videos = {"ave": (_first(media, "ave", ".mp4"), _first(media, "ave", ".mp3")),
              "avvp": (_first(media, "avvp", ".mp4"), _first(media, "avvp", ".mp3"))}
    clips = list(videos.values())
    counts: dict[str, int] = {}

    avqa = root / layout.avqa
    avqa_audio = _first(media, "avqa", ".mp3")
    entries = []
    for i, (video, _) in enumerate(clips):
        _link(video, avqa / "videos" / f"q{i}.mp4")
        _link(avqa_audio, avqa / "audios" / f"q{i}.mp3")
        entries.append({"video_id": f"q{i}", "question_id": 100 + i, "type": AVQA_TYPE,
                        "video_path": f"videos/q{i}.mp4", "audio_path": f"audios/q{i}.mp3",
                        "question": "How many instruments are sounding in the video?", "answer": "two"})
    _write_json(avqa / "test_samples.json", entries)
    counts["avqa"] = len(entries)

    ave = root / layout.ave
    entries = []
    for i, (video, audio) in enumerate(clips):
        _link(video, ave / "AVE" / f"e{i}.mp4")
        _link(audio, ave / "audio_data" / f"e{i}.mp3")
        entries.append({"event": ("Church bell", "Dog barking")[i % 2], "vid": f"e{i}", "start_time": i,
                        "end_time": 8})
    _write_json(ave / "test_samples.json", entries)
    counts["ave"] = len(entries)

    avvp = root / layout.avvp
    entries = []
    for i, (video, audio) in enumerate(clips):
        _link(video, avvp / "llp_videos" / f"p{i}.mp4")
        _link(audio, avvp / "audio_data" / f"p{i}.mp3")
        entries.append({"filename": f"p{i}", "vid": f"p{i}",
                        "event": "<audio>Speech,(0 10)</audio><visual>Dog,(2 6)</visual>"})
    _write_json(avvp / "test_samples.json", entries)
    counts["avvp"] = len(entries)

    valor = root / layout.valor
    entries = []
    for i, (video, audio) in enumerate(clips):
        _link(video, valor / "video_data" / f"c{i}.mp4")
        _link(audio, valor / "audio_data" / f"c{i}.mp3")
        entries.append({"video_id": f"c{i}", "desc": "a man is talking while a dog barks in the yard"})
    _write_json(valor / "val_samples.json", entries)
    counts["avcap"] = len(entries)

    avs = root / layout.avs
    arig_frame, arig_audio = _first(media, "arig", ".jpg"), _first(media, "arig", ".wav")
    entries = []
    for i in range(2):
        uid = f"arig{i}"
        _link(arig_frame, avs / "v1s" / uid / "frames" / f"{i}.jpg")
        _link(arig_audio, avs / "v1s" / uid / "audio.wav")
        entries.append({"split": "test", "audio_path": f"v1s/{uid}/audio.wav", "frame_path": f"v1s/{uid}/frames/{i}.jpg",
                        "mask_path": None, "top_left": [10 * i, 20], "bottom_right": [120, 150 + i], "a_obj": "guitar"})
    entries.append({**entries[0], "split": "train"})  # not a test entry: the reader leaves it out
    _write_json(avs / "v1s_grounding_samples.json", entries)
    counts["arig"] = len(entries) - 1

    for task, subset, masks in (("s4", "v1s", "labels_semantic"), ("ms3", "v1m", "labels_semantic"),
                                ("avss", "v2", "labels_rgb")):
        frame, mask, audio = (_first(media, task, s) for s in (".jpg", ".png", ".wav"))
        uid = f"{task}_clip"
        base = avs / subset / uid
        _link(audio, base / "audio.wav")
        for i in range(AVS_FRAMES[task]):
            _link(frame, base / "frames" / f"{i}.jpg")
            _link(mask, base / masks / f"{i}.png")
        entry = {"vid": uid, "uid": uid, "s_min": 0, "s_sec": 0, "a_obj": "guitar", "split": "test", "label": "guitar"}
        _write_json(avs / f"{task}_samples.json", [entry, {**entry, "uid": "not_written", "split": "train"}])
        counts[task] = AVS_FRAMES[task]

    ref = root / layout.ref_avs
    frame, mask, audio = (_first(media, "s4", s) for s in (".jpg", ".png", ".wav"))
    rows = ["vid,uid,split,fid,exp"]
    for k, split in enumerate(REF_AVS_TEST_SPLITS):
        vid = f"r{k}"
        _link(audio, ref / "media" / vid / "audio.wav")
        for i in range(REF_AVS_FRAMES):
            _link(frame, ref / "media" / vid / "frames" / f"{i}.jpg")
            gt = ref / "gt_mask" / vid / f"fid_{k}" / f"0000{i}.png"
            if split == "test_n":
                _empty_mask_like(mask, gt)
            else:
                _link(mask, gt)
        rows.append(f"{vid},{vid}_guitar_{k},{split},{k},the guitar being played")
    rows.append("rx,rx_guitar_9,train,9,the guitar being played")  # not a test row
    (ref / "metadata.csv").write_text("\n".join(rows) + "\n")
    counts["ref-avs"] = REF_AVS_FRAMES * len(REF_AVS_TEST_SPLITS)
    assert sorted(counts) == sorted(CRAB_TASKS), counts
    return counts
