"""The AV-UIE / AVSBench annotation rows of synthetic samples, their target texts, and the
files they go to (:data:`LAYOUT`, the folder layout :mod:`crab_jax.data.records.crab` reads)."""

from __future__ import annotations

import numpy as np

from crab_jax.data.records.crab import AVQA_FORMAT_TASKS, annotation_path, task_root
from crab_jax.data.records.record import Record
from crab_jax.data.synthetic.render import mask_box
from crab_jax.data.synthetic.scenes import AVUIE_TASKS, AveSample, AvqaClip, AvsSample

# The readers' folder names (CrabLayout defaults), so the output is a data root that
# ``read_crab_task(task, mode, out_dir)`` reads as is.
LAYOUT = {t: dict(root=task_root(t), train=annotation_path(t, "train"), test=annotation_path(t, "test"),
                  **({"labels": f"{task_root(t)}/converted_label"} if t in AVQA_FORMAT_TASKS + ("ave",) else {}))
          for t in AVUIE_TASKS}
# Top-level folders of the AV-UIE layout (one per dataset; the QA tasks share one).
LAYOUT_ROOTS = tuple(sorted({r["root"].split("/")[0] for r in LAYOUT.values()}))


def ave_label_text(event: str, start: int, end: int) -> str:
    return (f"So the audible and visible event in the video is <event> {event} </event>, "
            f"and the time range is <range> {start},{end} </range>.")


def avqa_label_text(answer: str) -> str:
    return f"So the answer is <answer> {answer} </answer>."


def ave_record(s: AveSample) -> dict:
    """Row of ``ave/*_samples.json`` (media: ``AVE/<vid>.mp4``, ``audio_data/<vid>.mp3``)."""
    return {"event": s.event, "vid": s.vid, "start_time": s.start_time, "end_time": s.end_time}


def avqa_records(c: AvqaClip) -> list[dict]:
    """Rows of ``music_avqa/*_samples.json`` (and of a QA task's ``synthetic_qa/<task>/*_samples.json``),
    one per question (paths relative to that folder)."""
    return [{"video_id": c.video_id, "question_id": q.question_id, "type": q.type,
             "video_path": f"video_data/{c.video_id}.mp4", "audio_path": f"audio_data/{c.video_id}.wav",
             "question": q.question, "answer": q.answer} for q in c.questions]


def s4_record(s: AvsSample, split: str) -> dict:
    """Row of ``avs/s4_samples.json`` (media under ``avs/v1s/<uid>/``)."""
    return {"vid": s.vid, "uid": s.uid, "s_min": 0, "s_sec": 0, "a_obj": s.a_obj, "split": split,
            "label": s.a_obj}


def arig_record(s: AvsSample, split: str, sounding_mask: np.ndarray) -> dict:
    """Row of ``avs/v1s_grounding_samples.json`` (paths relative to ``avs``); box of frame ``frame_idx``."""
    top_left, bottom_right = mask_box(sounding_mask[s.frame_idx])
    base = f"v1s/{s.uid}"
    return {"split": split, "audio_path": f"{base}/audio.wav", "frame_path": f"{base}/frames/{s.frame_idx}.jpg",
            "mask_path": f"{base}/labels_semantic/{s.frame_idx}.png", "top_left": top_left,
            "bottom_right": bottom_right, "a_obj": s.a_obj}



def heldout_target(record: Record) -> str | None:
    """The training target this dataset wrote for a test record of its AV-UIE files whose
    reader leaves it out: AVQA / AVE, the ``converted_label`` text (written for both splits);
    None for any other record."""
    file = record.source.partition("#")[0]
    if file in {LAYOUT[t]["test"] for t in AVQA_FORMAT_TASKS}:
        return avqa_label_text(record.gt)
    if file == LAYOUT["ave"]["test"]:
        f = record.fields
        return ave_label_text(f["event"], f["start_time"], f["end_time"])
    return None
