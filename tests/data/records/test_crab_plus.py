"""Readers of Crab+'s AVUIE_2 folder on small annotation files made here."""

from __future__ import annotations

import pytest

from crab_jax.data.records.crab_plus import read_crab_plus_records, read_crab_plus_task
from tests.data.records.annotations import write_file


def test_crab_plus_layout(tmp_path):
    write_file(tmp_path, "AVUIE_2/a2v/train.json", [dict(video1_path="1.mp4", video2_path="2.mp4", audio_path="a.wav",
                                                         correct_video=2, audio_event="", video1_event="",
                                                         video2_event="", label="<answer>2</answer>.")])
    (a2v,) = read_crab_plus_task("a2v", "train", tmp_path).records
    assert a2v.videos == ("AVUIE_2/a2v/video/1.mp4", "AVUIE_2/a2v/video/2.mp4")
    assert a2v.audios == ("AVUIE_2/a2v/audio/a.wav",) and a2v.answer == "<answer>2</answer>."
    write_file(tmp_path, "AVUIE_2/meld/test.json", [dict(video_path="m.mp4", audio_path="m.wav", Emotion="joy")])
    (meld,) = read_crab_plus_task("meld", "test", tmp_path).records
    assert meld.num_frames == 4 and meld.gt == "<answer>joy</answer>."
    write_file(tmp_path, "AVUIE_2/s4/test.json", [dict(visual_path="v1s/u/frames/2.jpg", audio_path="v1s/u/audio.wav",
                                                       vid="v", uid="u", a_obj="dog", frame_idx=2)])
    (s4,) = read_crab_plus_task("s4", "test", tmp_path).records
    assert s4.image_path == "AVUIE_2/s4/v1s/u/frames/2.jpg" and s4.frame_idx == 2
    assert s4.gt == "The object making the sound in the video is dog."
    with pytest.raises(ValueError, match="train-only"):
        read_crab_plus_task("unav", "test", tmp_path)


def test_crab_plus_gt_mask_paths_and_scorer_fields(tmp_path):
    write_file(tmp_path, "AVUIE_2/ms3/test.json", [dict(visual_path="v1m/u/frames/4.jpg", audio_path="v1m/u/a.wav",
                                                        vid="v", uid="u", a_obj="dog", frame_idx=4)])
    (ms3,) = read_crab_plus_task("ms3", "test", tmp_path).records
    assert ms3.mask_path == "AVUIE_2/ms3/v1m/u/labels_rgb/4.png" and ms3.fields["uid"] == "u"
    write_file(tmp_path, "AVUIE_2/ref_avs/test.json", [dict(
        visual_path="media/vid1/frames/3.jpg", audio_path="media/vid1/audio.wav", object="dog", split="test_n",
        vid="vid1", uid="u1", fid=0, frame_idx=3)])
    (ref,) = read_crab_plus_task("ref_avs", "test", tmp_path).records
    assert ref.mask_path == "AVUIE_2/ref_avs/gt_mask/vid1/fid_0/00003.png"
    assert ref.split == "test_n" and (ref.fields["fid"], ref.fields["vid"], ref.fields["split"]) == (0, "vid1", "test_n")
    write_file(tmp_path, "AVUIE_2/s4/test.json", [dict(visual_path="img/2.jpg", audio_path="a.wav", vid="v", uid="u",
                                                       a_obj="dog", frame_idx=2)])
    assert read_crab_plus_task("s4", "test", tmp_path).records[0].mask_path is None  # no '/frames/' in the path
    write_file(tmp_path, "AVUIE_2/s4/train.json", [dict(image_path="v1s/u/frames/0.jpg", audio_path="a.wav", vid="v",
                                                        uid="u", a_obj="dog", label_content="...")])
    assert read_crab_plus_task("s4", "train", tmp_path).records[0].mask_path is None
    write_file(tmp_path, "AVUIE_2/avqa_thu/test.json", [dict(
        video_path="v.mp4", audio_path="a.wav", id=3, video_name="n", video_id=9, question_relation="Both",
        question_type="Which", multi_choice=["a", "b"], question_text="Which?", answer=1)])
    (thu,) = read_crab_plus_task("avqa_thu", "test", tmp_path).records
    assert thu.fields["multi_choice"] == ["a", "b"] and thu.fields["question_type"] == "Which" and thu.gt == "1"
    write_file(tmp_path, "AVUIE_2/avqa/test.json", [dict(video_path="v.mp4", audio_path="a.wav", video_id="v",
                                                         question_id=1, type='["Audio", "Counting"]',
                                                         question="How many?", answer="two")])
    assert read_crab_plus_task("avqa", "test", tmp_path).records[0].fields["type"] == '["Audio", "Counting"]'


def test_read_crab_plus_records_collects_and_carries_test_targets(tmp_path):
    """The task-list reader: carried test targets, missing files collected, train-only tasks have no test split."""
    write_file(tmp_path, "AVUIE_2/ks/test.json", [
        dict(video_path="1.mp4", audio_path="1.wav", action="dog barking", label="<answer>dog barking</answer>"),
        dict(video_path="2.mp4", audio_path="2.wav", action="cat"),
        dict(video_path="3.mp4", audio_path="3.wav")])  # no action: a bad entry
    records, errors = read_crab_plus_records(tmp_path, ("ks", "unav", "ave"), "test", seed=3)
    assert [(r.source, r.answer, r.gt) for r in records] == [
        ("AVUIE_2/ks/test.json#0", "<answer>dog barking</answer>", "<answer>dog barking</answer>"),
        ("AVUIE_2/ks/test.json#1", None, "<answer>cat</answer>")]
    assert len(errors) == 2  # ks#2 and the missing ave file
    assert any("ks/test.json#2" in str(e) for e in errors) and any("ave/test.json" in str(e) for e in errors)
    write_file(tmp_path, "AVUIE_2/unav/train.json", [dict(video_path="u.mp4", audio_path="u.wav", vid="u",
                                                          label_content="events")])
    (unav,), errors = read_crab_plus_records(tmp_path, ("unav",), "train")
    assert not errors and unav.answer == "events" and unav.mode == "train"
    with pytest.raises(ValueError, match="unknown Crab\\+ task"):
        read_crab_plus_records(tmp_path, ("nope",), "train")


def test_read_crab_plus_records_tells_a_truncated_file_from_a_bad_entry(tmp_path):
    write_file(tmp_path, "AVUIE_2/ks/train.json", [dict(video_path="1.mp4", audio_path="1.wav", action="dog",
                                                        label="<answer>dog</answer>"), dict(video_path="2.mp4")])
    write_file(tmp_path, "AVUIE_2/ave/train.json", '[{"video_path": "1.mp4", "audio_path": "1.w')
    records, errors = read_crab_plus_records(tmp_path, ("ks", "ave"), "train")
    assert [r.task for r in records] == ["ks"]
    assert [(type(e).__name__, e.task) for e in errors] == [("BadRecordError", "ks"), ("BadFileError", "ave")]
    assert errors[1].path == "AVUIE_2/ave/train.json" and errors[1].line == 1 and errors[1].entries == 0
