"""Crab's quick-start requests as records."""

from __future__ import annotations

import pickle

import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.quick_start import quick_start_record, read_quick_start
from crab_jax.data.records.record import AudioSpec
from tests.data.records.annotations import write_file


def test_quick_start_requests(tmp_path):
    path = write_file(tmp_path, "example.json", [
        {"task": "s4", "audio_path": "s4/audio.wav", "image_path": "s4/0.jpg", "mask_path": "s4/0.png"},
        {"task": "avss", "audio_path": "avss/audio.wav", "image_path": "avss/3.jpg", "mask_path": "avss/3.png"},
        {"task": "ref-avs", "audio_path": "r/audio.wav", "image_path": "r/7.jpg", "exp": "The dog"}])
    s4, avss, ref = read_quick_start(path).records
    assert s4.audio == AudioSpec("frame", 5, 0) and s4.mode == "quick_start"
    assert avss.audio == AudioSpec("frame", 10, 3) and ref.audio == AudioSpec("clip", 10)
    assert ref.fields["exp"] == "The dog"
    assert pickle.loads(pickle.dumps(ref)) == ref  # records travel to worker processes
    with pytest.raises(BadRecordError, match="must be relative"):
        quick_start_record({"task": "ave", "video_path": "/abs/v.mp4", "audio_path": "a.mp3"})
