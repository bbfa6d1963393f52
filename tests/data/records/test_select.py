"""read_records: several reader families in one task list, bad entries and files collected."""

from __future__ import annotations

import json

import pytest

from crab_jax.data.errors import BadFileError
from crab_jax.data.records.crab import annotation_path
from crab_jax.data.records.select import read_records
from tests.data.records.annotations import write_file


def test_fine_tuning_and_pretraining_tasks_read_together(tmp_path):
    write_file(tmp_path, "ave/valid_train_samples.json",
               [dict(event="Bark", vid="a1", start_time=0, end_time=8), dict(event="Bark")])
    write_file(tmp_path, "lvis/train_samples.json",
               [dict(id=10, image_id=42, category_id=1, bbox=[0, 0, 1, 1], name="cat", area=5000, **{"def": "a feline"})])
    records, errors = read_records(tmp_path, ("ave", "lvis_seg", "avvp"))
    assert [r.task for r in records] == ["ave", "lvis_seg"]
    # the bad AVE entry and the missing AVVP annotation file are collected, not raised
    assert [(e.path, e.reason) for e in errors] == [("ave/valid_train_samples.json#1", "missing field 'vid'"),
                                                    ("avvp/train_samples.json", "annotation file not found")]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        read_records(tmp_path, ("nope",))


def test_a_truncated_annotation_file_is_one_file_error_of_its_task(tmp_path):
    write_file(tmp_path, "ave/valid_train_samples.json", [dict(event="Bark", vid="a1", start_time=0, end_time=8),
                                                          dict(event="Bark")])
    full = json.dumps([dict(video_id=i, question_id=i, type='["Audio", "Counting"]', video_path=f"{i}.mp4",
                            audio_path=f"{i}.wav", question="How many?", answer="two") for i in range(4)])
    write_file(tmp_path, annotation_path("avqa", "train"), full[:len(full) // 2])
    records, errors = read_records(tmp_path, ("ave", "avqa"))
    assert [r.task for r in records] == ["ave"]
    entry, whole = errors
    assert not isinstance(entry, BadFileError) and entry.task == "ave"
    assert isinstance(whole, BadFileError) and whole.task == "avqa"
    assert whole.path == annotation_path("avqa", "train") and "line 1 column" in whole.reason
