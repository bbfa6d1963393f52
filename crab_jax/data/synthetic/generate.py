"""Writes the synthetic audio-visual dataset (the tiny models' default data) in the real
AV-UIE / AVSBench layout and in the AV-UIE v2 (``AVUIE_2``) layout: :func:`generate`,
:func:`ensure_dataset`, :func:`load_records` and the CLI.

What the clips show and which tasks they serve: :mod:`crab_jax.data.synthetic.scenes`;
rendering: :mod:`~crab_jax.data.synthetic.render`; annotation rows: :mod:`~crab_jax.data.synthetic.records`
(AV-UIE) and :mod:`~crab_jax.data.synthetic.avuie2` (AVUIE_2); files: :mod:`~crab_jax.data.synthetic.writers`.

Layout under ``OUT``: a data root in the folder layouts of :mod:`crab_jax.data.records.crab`
and :mod:`crab_jax.data.records.crab_plus` (``CrabLayout`` defaults), so ``read_crab_task(task,
mode, OUT)`` and ``read_crab_plus_task(task, mode, OUT)`` read it; paths inside the JSON files
are relative to the task folder, as the readers expect. The same samples are in both layouts
(``ks`` only in AVUIE_2, the QA tasks only in AV-UIE); every media file is encoded once, the
AVUIE_2 copies are hard links::

    manifest.json                                   what was generated (see :func:`generate`)
    music_avqa/{valid_train,test}_samples.json      AVQA records (one per question)
    music_avqa/video_data/<video_id>.mp4            10 frames
    music_avqa/audio_data/<video_id>.wav
    music_avqa/converted_label/<question_id>.txt    AVQA targets (both splits)
    ave/{valid_train,test}_samples.json             AVE records
    ave/AVE/<vid>.mp4, ave/audio_data/<vid>.mp3     10 frames, 10 audio units
    ave/converted_label/<vid>.txt                   AVE targets (both splits)
    avs/s4_samples.json                             S4 records (both splits, field ``split``)
    avs/v1s_grounding_samples.json                  ARIG records (both splits)
    avs/v1s/<uid>/audio.wav, frames/<i>.jpg, labels_semantic/<i>.png   (i = 0..4)
    AVUIE_2/{ave,avqa,ks}/{train,test}.json + video/<name>.mp4, audio/<name>.{mp3,wav}
    AVUIE_2/{s4,arig}/{train,test}.json + v1s/<uid>/frames/<i>.jpg, audio.wav
                                                    (s4 also labels_rgb/<i>.png: spec B.6's GT path)
    synthetic_qa/<task>/...                         a QA task (audcls, viscls, count, where, match,
                                                    when; AV-UIE only): the files of music_avqa/

Everything is a pure function of ``(seed, task, split, index)``: sample ``i`` does not
depend on how many samples are drawn, and the JSON files are byte-identical across runs.

CLI: ``python -m crab_jax.data.synthetic --out DIR --seed 0 --num-train N --num-test M [--tasks ...,ks]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import json
import math
import os
import pathlib
import shutil
import sys
from typing import Sequence

import numpy as np
from tqdm import tqdm

from crab_jax.data.records.crab import AVQA_FORMAT_TASKS, QA_TASKS
from crab_jax.data.synthetic import avuie2
from crab_jax.data.synthetic.qa_scenes import QA_QUESTIONS, sample_qa_clip
from crab_jax.data.synthetic.records import (LAYOUT, LAYOUT_ROOTS, arig_record, ave_label_text, ave_record,
                                             avqa_label_text, avqa_records, s4_record)
from crab_jax.data.synthetic.render import BOX_SCALE, render_audio, render_frames
from crab_jax.data.synthetic.scenes import (ALL_TASKS, AVE_UNITS, AVQA_FRAMES, AVQA_QUESTIONS,
                                            AVQA_QUESTIONS_PER_CLIP, AVQA_SECONDS, AVS_UNITS, AVUIE2_TASKS,
                                            AVUIE_TASKS, CLASSES, FRAME_SIZE, KS_UNITS, SAMPLE_RATE, SPLITS, TASKS,
                                            UNIT_SAMPLES, AvqaClip, AvsSample, sample_ave, sample_avqa_clip,
                                            sample_avs, sample_ks)
from crab_jax.data.synthetic.writers import (VIDEO_CODEC, write_jpg, write_json, write_mask_png, write_mp3,
                                             write_mp4, write_text, write_wav)

# 2: the AVUIE_2 layout and the ks task; 3: the QA tasks (an older dataset is regenerated)
FORMAT_VERSION = 3
DEFAULT_NUM_TRAIN = 128
DEFAULT_NUM_TEST = 32
# Top-level entries a generation owns (removed by ``overwrite``).
OWNED_ENTRIES = ("manifest.json",) + tuple(sorted(set(LAYOUT_ROOTS) | {avuie2.ROOT}))

# AV-UIE media folders below a task's folder (the AVS tasks write per-clip folders).
_MEDIA_FOLDERS = {"ave": ("AVE", "audio_data"), **{t: ("video_data", "audio_data") for t in AVQA_FORMAT_TASKS}}


@dataclasses.dataclass(frozen=True)
class _Job:
    task: str
    split: str
    index: int          # clip index (AVQA: clip of two questions)
    num_records: int    # records this clip yields (AVQA: 1 or 2)


def _jobs(tasks: Sequence[str], num_train: int, num_test: int) -> list[_Job]:
    jobs = []
    for task in tasks:
        for split, n in (("train", num_train), ("test", num_test)):
            if task == "avqa":
                for c in range(math.ceil(n / AVQA_QUESTIONS_PER_CLIP)):
                    jobs.append(_Job(task, split, c, min(AVQA_QUESTIONS_PER_CLIP, n - c * AVQA_QUESTIONS_PER_CLIP)))
            else:
                jobs.extend(_Job(task, split, i, 1) for i in range(n))
    return jobs


def _write_avs_clip(root: pathlib.Path, task: str, s: AvsSample) -> tuple[pathlib.Path, np.ndarray]:
    """Writes ``<avs>/v1s/<uid>/``; returns it and the sounding object's masks ``[5, H, W]``."""
    clip_dir = root / LAYOUT[task]["root"] / "v1s" / s.uid
    (clip_dir / "frames").mkdir(parents=True, exist_ok=True)
    (clip_dir / "labels_semantic").mkdir(parents=True, exist_ok=True)
    frames, masks = render_frames(s.clip)
    for i in range(s.clip.num_frames):
        write_jpg(clip_dir / "frames" / f"{i}.jpg", frames[i])
        write_mask_png(clip_dir / "labels_semantic" / f"{i}.png", masks[i])
    write_wav(clip_dir / "audio.wav", render_audio(s.clip))
    return clip_dir, masks


def _write_avqa_format(root: pathlib.Path, task: str, c: AvqaClip, split: str,
                       num_records: int) -> tuple[list[tuple[str, dict]], pathlib.Path, pathlib.Path]:
    """Writes one clip of an AVQA-format task (media, label texts); returns its ``(annotation
    file, row)`` pairs and the video / audio files."""
    base = root / LAYOUT[task]["root"]
    video, audio = base / "video_data" / f"{c.video_id}.mp4", base / "audio_data" / f"{c.video_id}.wav"
    frames, _ = render_frames(c.clip)
    write_mp4(video, frames, fractions.Fraction(AVQA_FRAMES, AVQA_SECONDS))
    write_wav(audio, render_audio(c.clip))
    for q in c.questions[:num_records]:
        write_text(root / LAYOUT[task]["labels"] / f"{q.question_id}.txt", avqa_label_text(q.answer))
    return [(LAYOUT[task][split], r) for r in avqa_records(c)[:num_records]], video, audio


def _run_job(root: pathlib.Path, seed: int, job: _Job) -> list[tuple[str, dict]]:
    """Renders and writes one clip (both layouts); returns ``(annotation file, row)`` pairs."""
    split = job.split
    if job.task == "ave":
        s = sample_ave(seed, split, job.index)
        base = root / LAYOUT["ave"]["root"]
        video, audio = base / "AVE" / f"{s.vid}.mp4", base / "audio_data" / f"{s.vid}.mp3"
        frames, _ = render_frames(s.clip)
        write_mp4(video, frames, fractions.Fraction(AVE_UNITS * SAMPLE_RATE, s.clip.num_samples))
        write_mp3(audio, render_audio(s.clip))
        write_text(root / LAYOUT["ave"]["labels"] / f"{s.vid}.txt", ave_label_text(s.event, s.start_time, s.end_time))
        return [(LAYOUT["ave"][split], ave_record(s))] + avuie2.ave_entries(root, s, split, video, audio)
    if job.task == "avqa":
        c = sample_avqa_clip(seed, split, job.index)
        rows, video, audio = _write_avqa_format(root, "avqa", c, split, job.num_records)
        return rows + avuie2.avqa_entries(root, c, split, job.num_records, video, audio)
    if job.task in QA_TASKS:
        return _write_avqa_format(root, job.task, sample_qa_clip(job.task, seed, split, job.index), split, 1)[0]
    if job.task == "ks":
        k = sample_ks(seed, split, job.index)
        video = avuie2.media_file(root, "ks", "video", f"{k.vid}.mp4")
        audio = avuie2.media_file(root, "ks", "audio", f"{k.vid}.wav")
        frames, _ = render_frames(k.clip)
        write_mp4(video, frames, fractions.Fraction(KS_UNITS * SAMPLE_RATE, k.clip.num_samples))
        write_wav(audio, render_audio(k.clip))
        return avuie2.ks_entries(k, split, video, audio)
    s = sample_avs(job.task, seed, split, job.index)
    clip_dir, masks = _write_avs_clip(root, job.task, s)
    crab = s4_record(s, split) if job.task == "s4" else arig_record(s, split, masks)
    return [(LAYOUT[job.task][split], crab)] + avuie2.avs_entries(root, job.task, s, split, clip_dir, masks)


def _prepare_out(root: pathlib.Path, overwrite: bool) -> None:
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root}: output folder is not empty; pass overwrite=True (--overwrite) "
                                  "to replace a previous synthetic dataset there")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in OWNED_ENTRIES)
        if foreign:  # an interrupted generation (no manifest yet) holds only our own entries
            raise FileExistsError(f"{root}: holds {foreign[:5]}, which a synthetic dataset does not write; "
                                  "refusing to delete anything there (choose an empty folder)")
        for name in OWNED_ENTRIES:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _check_args(seed, num_train, num_test, tasks) -> tuple[str, ...]:
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks {list(tasks)}: expected a non-empty list of distinct names from {list(ALL_TASKS)}")
    if num_train < 0 or num_test < 0:
        raise ValueError(f"num_train={num_train}, num_test={num_test}: counts must be >= 0")
    if int(seed) < 0:
        raise ValueError(f"seed={seed}: must be >= 0")
    return tuple(t for t in ALL_TASKS if t in tasks)  # canonical order: the output never depends on it


def build_manifest(seed: int, num_train: int, num_test: int, tasks: Sequence[str], counts: dict) -> dict:
    """The ``manifest.json`` content: the generation's parameters, classes, layouts and counts."""
    return {
        "name": "crab_jax synthetic audio-visual dataset",
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_test": int(num_test),
        "tasks": list(tasks),
        "media": {"frame_size": FRAME_SIZE, "sample_rate": SAMPLE_RATE, "unit_samples": UNIT_SAMPLES,
                  "ave_units": AVE_UNITS, "avs_units": AVS_UNITS, "avqa_seconds": AVQA_SECONDS,
                  "avqa_frames": AVQA_FRAMES, "box_scale": BOX_SCALE, "video_codec": VIDEO_CODEC},
        "classes": [{"name": c.name, "shape": c.shape, "colour": list(c.colour), "tone_hz": c.tone_hz}
                    for c in CLASSES],
        "avqa_questions": {k: {"question": q, "type": t, "answers": list(a)}
                           for k, (q, t, a) in AVQA_QUESTIONS.items()},
        "qa_questions": {k: {"question": q, "type": t, "answers": list(a)}
                         for k, (q, t, a) in QA_QUESTIONS.items() if k in tasks},
        "layout": {t: LAYOUT[t] for t in tasks if t in LAYOUT},
        "avuie2_layout": {t: avuie2.layout_of(t) for t in tasks if t in AVUIE2_TASKS},
        "counts": counts,
    }


def generate(out_dir: str | os.PathLike, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN,
             num_test: int = DEFAULT_NUM_TEST, tasks: Sequence[str] = TASKS, *, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Writes the dataset under ``out_dir`` and returns the manifest (also ``out_dir/manifest.json``).

    Args:
      out_dir: empty (or missing) folder; with ``overwrite`` a previous (or interrupted)
        synthetic dataset there is replaced: its own entries (:data:`OWNED_ENTRIES`) are
        removed, and a folder holding anything else is refused.
      seed: the dataset seed (sample i of a task/split depends on ``(seed, task, split, i)`` only).
      num_train, num_test: samples per task and split (AVQA: questions; an S4 test clip
        expands to 5 frame records: in the AV-UIE reader, and as 5 AVUIE_2 test rows).
      tasks: subset of :data:`~crab_jax.data.synthetic.scenes.ALL_TASKS` (``ks``: AVUIE_2 only;
        the QA tasks ``audcls, viscls, count, where, match, when``: AV-UIE only).
    Returns:
      the manifest dict: ``seed, num_train, num_test, tasks, media, classes, avqa_questions,
      qa_questions`` (the QA tasks generated), ``layout`` (AV-UIE, per task: ``root``,
      ``train``/``test`` annotation files, ``labels``),
      ``avuie2_layout`` (per task: ``root``, ``train``/``test``, ``target_field``, media
      folders) and ``counts`` (per task and split: ``records`` = AV-UIE annotation rows,
      ``avuie2_records`` = AVUIE_2 rows, ``clips``).
    """
    tasks = _check_args(seed, num_train, num_test, tasks)
    root = pathlib.Path(out_dir)
    _prepare_out(root, overwrite)
    for task in tasks:
        for sub in _MEDIA_FOLDERS.get(task, ()):
            (root / LAYOUT[task]["root"] / sub).mkdir(parents=True, exist_ok=True)
        for kind in ("video", "audio") if task in avuie2.VIDEO_TASKS else ():
            (root / avuie2.layout_of(task)[kind]).mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict]] = {}
    counts = {t: {s: {"records": 0, "avuie2_records": 0, "clips": 0} for s in SPLITS} for t in tasks}
    jobs = _jobs(tasks, num_train, num_test)
    for job in tqdm(jobs, desc="synthetic clips", unit="clip", disable=not progress):
        rows = _run_job(root, seed, job)
        c = counts[job.task][job.split]
        c["clips"] += 1
        for name, row in rows:
            c["avuie2_records" if name.startswith(avuie2.ROOT + "/") else "records"] += 1
            files.setdefault(name, []).append(row)
    for task in tasks:  # every annotation file exists, even when a split is empty
        for split in SPLITS:
            if task in LAYOUT:
                files.setdefault(LAYOUT[task][split], [])
            if task in AVUIE2_TASKS:
                files.setdefault(avuie2.annotation_file(task, split), [])
    for name, rows in sorted(files.items()):
        write_json(root / name, rows)
    manifest = build_manifest(seed, num_train, num_test, tasks, counts)
    write_json(root / "manifest.json", manifest)  # last: its presence marks a complete dataset
    return manifest


def ensure_dataset(out_dir: str | os.PathLike, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN,
                   num_test: int = DEFAULT_NUM_TEST, tasks: Sequence[str] = TASKS, *, progress: bool = True) -> dict:
    """Returns the manifest of the dataset in ``out_dir``, generating it first unless a complete
    one with the same parameters (seed, counts, tasks, format version) is already there."""
    tasks = _check_args(seed, num_train, num_test, tasks)
    path = pathlib.Path(out_dir) / "manifest.json"
    if path.is_file():
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            m = {}
        want = dict(format_version=FORMAT_VERSION, seed=int(seed), num_train=int(num_train),
                    num_test=int(num_test), tasks=list(tasks))
        if all(m.get(k) == v for k, v in want.items()):
            return m
    return generate(out_dir, seed, num_train, num_test, tasks, overwrite=True, progress=progress)


def load_records(out_dir: str | os.PathLike, task: str, split: str) -> list[dict]:
    """The raw AV-UIE JSON rows of one task and split (S4 / ARIG files hold both splits: filtered
    by ``split``); the AVUIE_2 rows are in ``avuie2.annotation_file(task, split)``."""
    if task not in AVUIE_TASKS or split not in SPLITS:
        raise ValueError(f"load_records: task {task!r} / split {split!r} not in {AVUIE_TASKS} / {SPLITS}")
    path = pathlib.Path(out_dir) / LAYOUT[task][split]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {task} annotation file (generate the dataset with --tasks {task})")
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [r for r in rows if r.get("split", split) == split]


# ----------------------------------------------------------------------------- CLI


def _parse_tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"--tasks {text!r}: expected a comma list from {','.join(ALL_TASKS)}")
    return tasks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.data.synthetic",
        description="Generate the synthetic audio-visual dataset (AVE, AVQA, S4, ARIG; on request KS, and "
                    "the short-answer QA tasks audcls, viscls, count, where, match, when) in "
                    "two real JSON + media layouts under one data root: AV-UIE / AVSBench (Crab) and "
                    "AV-UIE v2 'AVUIE_2' (Crab+), the same samples in both (media encoded once, hard-"
                    "linked). Coloured shapes with their own tones, one object sounding per clip, so "
                    "answers need both audio and frames. Deterministic from --seed (same seed -> "
                    "identical JSON and decoded media).",
        epilog="Layout (the folder layouts crab_jax.data.records.crab and .crab_plus read): OUT/manifest.json, "
               "OUT/music_avqa/{valid_train,test}_samples.json + video_data/ audio_data/ converted_label/, "
               "OUT/ave/{valid_train,test}_samples.json + AVE/ audio_data/ converted_label/, "
               "OUT/avs/{s4_samples.json,v1s_grounding_samples.json,v1s/<uid>/}, "
               "OUT/synthetic_qa/<task>/ (the files of music_avqa/; AV-UIE only), "
               "OUT/AVUIE_2/<task>/{train,test}.json + video/ audio/ (ave, avqa, ks) or "
               "v1s/<uid>/{frames,labels_rgb}/ audio.wav (s4, arig).")
    p.add_argument("--out", required=True, help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN,
                   help=f"train records per task (AVQA: questions, 2 per clip; default {DEFAULT_NUM_TRAIN})")
    p.add_argument("--num-test", type=int, default=DEFAULT_NUM_TEST,
                   help=f"test records per task (S4: clips, each 5 frame records: in the AV-UIE reader, "
                        f"and 5 AVUIE_2 test rows; default {DEFAULT_NUM_TEST})")
    p.add_argument("--tasks", type=_parse_tasks, default=TASKS,
                   help=f"comma list of tasks to generate from {','.join(ALL_TASKS)} (default "
                        f"{','.join(TASKS)}; ks is written in the AVUIE_2 layout only, the QA tasks "
                        f"{','.join(QA_TASKS)} in the AV-UIE layout only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous synthetic dataset in --out (only its own files are removed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        m = generate(args.out, args.seed, args.num_train, args.num_test, args.tasks, overwrite=args.overwrite,
                     progress=not args.quiet)
    except (FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{t}: {c['train']['records']} train / {c['test']['records']} test"
                        for t, c in m["counts"].items() if t in m["layout"])
    plus = ", ".join(f"{t}: {c['train']['avuie2_records']} train / {c['test']['avuie2_records']} test"
                     for t, c in m["counts"].items() if t in m["avuie2_layout"])
    print(f"wrote {args.out} (seed {m['seed']}; AV-UIE: {summary or 'no task'}; AVUIE_2: {plus})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
