"""Readers of Crab+'s AVUIE_2 folder on small annotation files made here."""

from __future__ import annotations

import pytest

from crab_jax.data.records.crab_plus import read_crab_plus_task
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
