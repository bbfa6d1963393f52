"""The synthetic samples in the AVUIE_2 layout (the AV-UIE v2 annotations, spec B.3), next to
the AV-UIE layout under the same data root: annotation rows, their target texts, and the
media, hard-linked from the AV-UIE files (every clip is rendered and encoded once).

Layout under ``OUT`` (``<task>/{train,test}.json`` as
:func:`crab_jax.data.records.crab_plus.read_crab_plus_task` reads them)::

    AVUIE_2/ave/{train,test}.json       video/<vid>.mp4, audio/<vid>.mp3 (= ave/AVE/, ave/audio_data/)
    AVUIE_2/avqa/{train,test}.json      video/<video_id>.mp4, audio/<video_id>.wav (one row per question)
    AVUIE_2/ks/{train,test}.json        video/<vid>.mp4, audio/<vid>.wav (KS has no AV-UIE twin)
    AVUIE_2/s4/{train,test}.json        v1s/<uid>/frames/<i>.jpg, labels_rgb/<i>.png, audio.wav
    AVUIE_2/arig/{train,test}.json      v1s/<uid>/frames/<i>.jpg, audio.wav

Video tasks store file names (the reader joins ``video/`` / ``audio/``), image tasks paths
relative to ``AVUIE_2/<task>/``. S4 trains on frame 0 (``image_path``); its test file has one
row per frame (``visual_path``, ``frame_idx``), and the GT mask of a test row is where spec B.6's
rule puts it: the image path with ``/frames/`` -> ``/labels_rgb/`` and ``.jpg`` -> ``.png``
(a binary grey PNG, object = 255; B.6 reads it as ``L`` and ``> 0``).

Targets (the real texts, with reasoning, exist only in the AV-UIE v2 JSON; these keep the
parts its consumers parse, spec B.3 / B.6), in the reader's target field
(:data:`~crab_jax.data.records.crab_plus.CRAB_PLUS_TARGET`); test rows carry it too, so a
held-out record can be trained on:

* avqa ``label``: ``So the answer is <answer>{answer}</answer>.``
* ave ``label_content``: the AV-UIE AVE wording (:func:`~crab_jax.data.synthetic.records.ave_label_text`)
* ks ``label``: ``<answer>{action}</answer>`` (the test GT string)
* s4 ``label_content``: ``The object making the sound in the video is {a_obj}. Its bounding box
  is [x1,y1,x2,y2] and three pixel points are [x,y],[x,y],[x,y].`` (224-px, inclusive box)
* arig ``label_content``: ``The sounding object is {a_obj}. Its coordinates are
  <obj>({x1},{y1})({x2},{y2})</obj>.`` (the AV-UIE ARIG box: ``top_left``, ``bottom_right``)
"""

from __future__ import annotations

import pathlib

import numpy as np

from crab_jax.data.records.crab_plus import CRAB_PLUS_TARGET
from crab_jax.data.records.record import CrabLayout, join_path
from crab_jax.data.synthetic.records import ave_label_text
from crab_jax.data.synthetic.render import mask_box, mask_points
from crab_jax.data.synthetic.scenes import AveSample, AvqaClip, AvsSample, KsSample
from crab_jax.data.synthetic.writers import link_file

ROOT = CrabLayout().avuie2          # the folder the reader looks in
VIDEO_TASKS = ("ave", "avqa", "ks")
AVS_SUBSET = "v1s"                  # image tasks keep AVSBench's clip folders below the task folder
GT_MASK_FOLDER = "labels_rgb"       # where spec B.6 looks for an S4 test frame's mask

Entry = tuple[str, dict]            # (annotation file relative to OUT, row)


def task_folder(task: str) -> str:
    return join_path(ROOT, task)


def annotation_file(task: str, split: str) -> str:
    return join_path(ROOT, task, f"{split}.json")


def layout_of(task: str) -> dict:
    """The manifest's description of one task's AVUIE_2 files."""
    if task in VIDEO_TASKS:
        media = {"video": join_path(ROOT, task, "video"), "audio": join_path(ROOT, task, "audio")}
    else:
        media = {"clips": join_path(ROOT, task, AVS_SUBSET)}
    return dict(root=task_folder(task), train=annotation_file(task, "train"), test=annotation_file(task, "test"),
                target_field=CRAB_PLUS_TARGET[task], **media)


def media_file(root: pathlib.Path, task: str, kind: str, name: str) -> pathlib.Path:
    """``OUT/AVUIE_2/<task>/<kind>/<name>`` (``kind``: ``video`` or ``audio``)."""
    return root / ROOT / task / kind / name


# ----------------------------------------------------------------------------- target texts


def avqa_target(answer: str) -> str:
    return f"So the answer is <answer>{answer}</answer>."


def ks_target(action: str) -> str:
    return f"<answer>{action}</answer>"


def s4_target(a_obj: str, mask: np.ndarray) -> str:
    (x1, y1), (x2, y2) = mask_box(mask)
    points = ",".join(f"[{x},{y}]" for x, y in mask_points(mask, 3))
    return (f"The object making the sound in the video is {a_obj}. Its bounding box is [{x1},{y1},{x2},{y2}] "
            f"and three pixel points are {points}.")


def arig_target(a_obj: str, top_left, bottom_right) -> str:
    (x1, y1), (x2, y2) = top_left, bottom_right
    return f"The sounding object is {a_obj}. Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>."


# ----------------------------------------------------------------------------- rows + media


def ave_entries(root: pathlib.Path, s: AveSample, split: str, video: pathlib.Path, audio: pathlib.Path) -> list[Entry]:
    """Links the AVE clip's ``video`` / ``audio`` files into ``AVUIE_2/ave``; its row."""
    v, a = f"{s.vid}{video.suffix}", f"{s.vid}{audio.suffix}"
    link_file(video, media_file(root, "ave", "video", v))
    link_file(audio, media_file(root, "ave", "audio", a))
    row = {"video_path": v, "audio_path": a, "event": s.event, "vid": s.vid, "start_time": s.start_time,
           "end_time": s.end_time, "label_content": ave_label_text(s.event, s.start_time, s.end_time)}
    return [(annotation_file("ave", split), row)]


def avqa_entries(root: pathlib.Path, c: AvqaClip, split: str, num_questions: int, video: pathlib.Path,
                 audio: pathlib.Path) -> list[Entry]:
    """Links the AVQA clip's media into ``AVUIE_2/avqa``; one row per question (the first ``num_questions``)."""
    v, a = f"{c.video_id}{video.suffix}", f"{c.video_id}{audio.suffix}"
    link_file(video, media_file(root, "avqa", "video", v))
    link_file(audio, media_file(root, "avqa", "audio", a))
    return [(annotation_file("avqa", split),
             {"video_path": v, "audio_path": a, "video_id": c.video_id, "question_id": q.question_id,
              "type": q.type, "question": q.question, "answer": q.answer, "label": avqa_target(q.answer)})
            for q in c.questions[:num_questions]]


def ks_entries(s: KsSample, split: str, video: pathlib.Path, audio: pathlib.Path) -> list[Entry]:
    """The KS row of a clip whose media the generator wrote at :func:`media_file` paths."""
    row = {"video_path": video.name, "audio_path": audio.name, "vid": s.vid, "action": s.action,
           "label": ks_target(s.action)}
    return [(annotation_file("ks", split), row)]


def _link_avs_clip(root: pathlib.Path, task: str, s: AvsSample, clip_dir: pathlib.Path) -> str:
    """Links the AV-UIE clip folder's frames, audio (and S4 masks, as ``labels_rgb``) into
    ``AVUIE_2/<task>/v1s/<uid>/``; returns that folder relative to the task folder."""
    rel = join_path(AVS_SUBSET, s.uid)
    dst = root / task_folder(task) / rel
    for i in range(s.clip.num_frames):
        link_file(clip_dir / "frames" / f"{i}.jpg", dst / "frames" / f"{i}.jpg")
        if task == "s4":
            link_file(clip_dir / "labels_semantic" / f"{i}.png", dst / GT_MASK_FOLDER / f"{i}.png")
    link_file(clip_dir / "audio.wav", dst / "audio.wav")
    return rel


def avs_entries(root: pathlib.Path, task: str, s: AvsSample, split: str, clip_dir: pathlib.Path,
                masks: np.ndarray) -> list[Entry]:
    """Links an S4 / ARIG clip into ``AVUIE_2/<task>``; its rows (``masks``: ``[T, H, W]`` of the
    sounding object). S4: train frame 0, test one row per frame; ARIG: frame ``s.frame_idx``."""
    base = _link_avs_clip(root, task, s, clip_dir)
    audio = join_path(base, "audio.wav")
    image_key = "image_path" if split == "train" else "visual_path"
    file = annotation_file(task, split)
    if task == "s4":
        frames = [0] if split == "train" else range(s.clip.num_frames)
        rows = []
        for i in frames:
            row = {image_key: join_path(base, "frames", f"{i}.jpg"), "audio_path": audio, "vid": s.vid,
                   "uid": s.uid, "a_obj": s.a_obj}
            if split != "train":
                row["frame_idx"] = i
            rows.append((file, {**row, "label_content": s4_target(s.a_obj, masks[i])}))
        return rows
    i = s.frame_idx
    top_left, bottom_right = mask_box(masks[i])
    row = {image_key: join_path(base, "frames", f"{i}.jpg"), "audio_path": audio, "a_obj": s.a_obj}
    if split != "train":
        row.update(top_left=top_left, bottom_right=bottom_right, frame_idx=i)
    return [(file, {**row, "label_content": arig_target(s.a_obj, top_left, bottom_right)})]
