"""Crab's audio segmentation (vs the original on the example media) and audio decoding."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import soundfile as sf

from crab_jax.data.media.audio import (
    AudioFileError,
    canonical_task,
    load_audio,
    segment_at_frame,
    segment_audio,
    segment_clip,
    segment_windows,
    samples_per_unit,
    task_units,
)
from tests.conftest import assert_parity
from tests.data.media.beats_fixtures import beats_arrays, fixture_tasks, media_root


@pytest.mark.parity
def test_segmentation_of_real_media_matches_original(fixtures_dir, manifest):
    arrays = beats_arrays(fixtures_dir)
    media = media_root(fixtures_dir)
    inputs = manifest["fixtures"]["beats"]["config"]["inputs"]
    assert {i["task"] for i in inputs} == set(fixture_tasks(arrays))
    for inp in inputs:
        task = inp["task"]
        path = media / inp["audio_path"]
        assert path.is_file(), f"manifest input {task}: media file {path} is missing"
        audio = load_audio(path)
        rule = inp.get("rule", "")
        tot = re.search(r"tot=(\d+)", rule)
        if tot:  # the manifest's rule text agrees with this port's rule table
            assert int(tot.group(1)) == task_units(task), f"{task}: rule {rule!r}"
        nps = re.search(r"int\(len\s*/\s*\d+\)\s*=\s*(\d+)", rule)
        if nps:
            assert samples_per_unit(audio.shape[0], task_units(task)) == int(nps.group(1)), f"{task}: rule {rule!r}"
        decoded = inp.get("decode", {}).get("samples_dataset_decode")
        if decoded is not None:
            assert audio.shape[0] == decoded, f"{task}: decoded {audio.shape[0]} samples, original {decoded}"
        segments = segment_audio(task, audio, inp.get("idx"))
        ref = arrays[f"{task}_waveform_segments"]
        exact = np.array_equal(segments.waveforms, ref)
        print(f"{task}: {ref.shape[0]} segment(s) x {ref.shape[1]} samples, bit-exact: {exact}")
        assert_parity(segments.waveforms, ref, f"{task}_waveform_segments")
        np.testing.assert_array_equal(segments.computed_in_float64, arrays[f"{task}_segment_computed_in_float64"])


def test_segmentation_rules_on_synthetic_audio():
    audio = np.arange(1, 10 * 100 + 7, dtype=np.float32)  # 1006 samples: n = 100 for tot = 10
    clip = segment_clip(audio, 10)
    assert clip.waveforms.shape == (10, 100) and not clip.computed_in_float64.any()
    np.testing.assert_array_equal(clip.waveforms[3], audio[300:400])

    one = segment_at_frame(audio, 2, 5)  # n = 201
    np.testing.assert_array_equal(one.waveforms[0], audio[402:603])
    short = segment_at_frame(audio[:1000], 5, 5)  # past the end: kept short (empty)
    assert short.waveforms.shape == (1, 0)
    arig = segment_at_frame(audio[:1000], 4, 5, pad_short=False)
    assert arig.waveforms.shape == (1, 200)
    padded = segment_audio("arig", audio[:950], 5)  # n = 190, frame 5 is past the end
    assert padded.waveforms.shape == (1, 190) and padded.computed_in_float64.all()
    assert not padded.waveforms.any()

    n = 50
    audio = np.random.default_rng(0).standard_normal(60 * n + 3).astype(np.float32)
    windows = segment_windows(audio)
    assert windows.waveforms.shape == (10, 2 * n)
    np.testing.assert_array_equal(windows.computed_in_float64, [True] + [False] * 9)
    front = 2 * n - int(1.5 * n)
    assert not windows.waveforms[0, :front].any()
    np.testing.assert_array_equal(windows.waveforms[0, front:], audio[: int(1.5 * n)])
    np.testing.assert_array_equal(windows.waveforms[1], audio[int(5.5 * n): int(7.5 * n)])
    np.testing.assert_array_equal(segment_audio("AVQA", audio).waveforms, windows.waveforms)

    assert canonical_task("Ref_AVS") == "ref-avs"
    with pytest.raises(ValueError, match="idx"):
        segment_audio("s4", audio)
    with pytest.raises(ValueError, match="no audio segmentation rule"):
        segment_audio("vqa", audio)


def test_load_audio_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing_clip.wav"
    with pytest.raises(FileNotFoundError, match="missing_clip.wav"):
        load_audio(missing)
    empty = tmp_path / "empty_clip.mp3"
    empty.write_bytes(b"")
    with pytest.raises(AudioFileError, match="empty_clip.mp3"):
        load_audio(empty)
    garbage = tmp_path / "garbage_clip.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 10)
    with warnings.catch_warnings():  # librosa may warn while falling back between decoders
        warnings.simplefilter("ignore")
        with pytest.raises(AudioFileError, match="garbage_clip.wav"):
            load_audio(garbage)


def test_load_audio_decodes_mono_16k(tmp_path):
    stereo = np.stack([np.full(8000, 0.25), np.full(8000, -0.75)], 1)
    path = tmp_path / "stereo_8k.wav"
    sf.write(path, stereo, 8000)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] - 16000) <= 1
    np.testing.assert_allclose(audio[2000:14000], -0.25, atol=1e-3)  # channel average
