"""Crab+ requests on a user's own clips -> test records prompted like the AV-UIE v2 test records."""

from __future__ import annotations

import json

import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.crab_plus_requests import read_crab_plus_requests, request_record


def test_request_fields_per_task():
    ave = request_record({"task": "ave", "video_path": "a/clip.mp4", "audio_path": "a/clip.wav"})
    assert (ave.family, ave.mode, ave.videos, ave.audios, ave.num_frames) == \
        ("crab_plus", "test", ("a/clip.mp4",), ("a/clip.wav",), 10)
    assert request_record({"task": "meld", "video_path": "v.mp4", "audio_path": "a.wav"}).num_frames == 4
    pair = request_record({"task": "a2v", "video_path": "1.mp4", "video2_path": "2.mp4", "audio_path": "a.wav"})
    assert pair.videos == ("1.mp4", "2.mp4")
    two = request_record({"task": "v2a", "video_path": "1.mp4", "audio_path": "a.wav", "audio2_path": "b.wav"})
    assert two.audios == ("a.wav", "b.wav")
    s4 = request_record({"task": "s4", "image_path": "v/frames/3.jpg", "audio_path": "a.wav"})
    assert s4.audio.idx == 3 and s4.frame_idx == 3  # the AVSBench frame name
    ms3 = request_record({"task": "ms3", "image_path": "img.jpg", "audio_path": "a.wav", "frame_idx": 2})
    assert ms3.audio.idx == 2
    ref = request_record({"task": "Ref-AVS", "image_path": "f.jpg", "audio_path": "a.wav", "object": "The Dog"})
    assert ref.task == "ref_avs" and ref.fields["object"] == "The Dog" and ref.audio.idx == 0
    avqa = request_record({"task": "avqa", "video_path": "v.mp4", "audio_path": "a.wav", "question": "Why?"})
    assert avqa.question == "Why?"


@pytest.mark.parametrize("request_, match", [
    ({"task": "avqa", "video_path": "v.mp4", "audio_path": "a.wav"}, "question"),
    ({"task": "nope", "video_path": "v.mp4"}, "no task 'nope'"),
    ({"task": "ave", "video_path": "/abs/v.mp4", "audio_path": "a.wav"}, "relative to --media-root"),
    ({"task": "a2v", "video_path": "v.mp4", "audio_path": "a.wav"}, "video2_path"),
])
def test_bad_requests_name_the_field(request_, match):
    with pytest.raises(BadRecordError, match=match):
        request_record(request_)


def test_read_collects_or_raises(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"task": "ave", "video_path": "v.mp4", "audio_path": "a.wav"}, {"task": "ks"}]))
    result = read_crab_plus_requests(path, strict=False)
    assert len(result.records) == 1 and len(result.errors) == 1 and "r.json#1" in result.errors[0].path
    with pytest.raises(BadRecordError):
        read_crab_plus_requests(path)
