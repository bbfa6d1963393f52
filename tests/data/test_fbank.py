"""BEATs front end: Kaldi fbank, Crab's audio segmentation and decoding vs the original."""

import math
import re
import warnings

import numpy as np
import pytest

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
from crab_jax.data.media.fbank import LOG_FLOOR, FbankConfig, beats_fbank, kaldi_fbank, mel_banks
from tests.conftest import PARITY_RTOL, assert_parity

# float32 FFT rounding noise sits about eps32 below a frame's peak energy: ln(1/eps32) ~ 15.9
# nats. Mel bins that far down (the empty top band of an mp3) carry the reference's own
# float32 noise: a float64 evaluation of the same formula is ~1.1e-4 of max|ref| away from it
# there, so no port can meet the 1e-4 bound on them. They get a 10x looser bound; every
# other bin the standard one.
NOISE_FLOOR_NATS = math.log(1.0 / np.finfo(np.float32).eps) - 2.0
NOISE_FLOOR_RTOL = 10 * PARITY_RTOL


def _npz(fixtures_dir):
    return np.load(fixtures_dir / "beats" / "beats.npz")


def _tasks(arrays) -> list[str]:
    return sorted(k[: -len("_waveform_segments")] for k in arrays.files if k.endswith("_waveform_segments"))


def _fbank_cfg(manifest) -> FbankConfig:
    return FbankConfig.from_dict(manifest["fixtures"]["beats"]["config"]["fbank"])


def _media_root(fixtures_dir):
    root = fixtures_dir.parent.parent / "media"
    if not root.is_dir():
        pytest.skip(f"example media not found at {root}")
    return root


@pytest.mark.parity
def test_fbank_matches_original(fixtures_dir, manifest):
    arrays = _npz(fixtures_dir)
    cfg = _fbank_cfg(manifest)
    tasks = _tasks(arrays)
    assert tasks, "no *_waveform_segments arrays in beats.npz"
    for task in tasks:
        flags = arrays[f"{task}_segment_computed_in_float64"]
        ref = arrays[f"{task}_fbank"]
        ours = beats_fbank(arrays[f"{task}_waveform_segments"], cfg, computed_in_float64=flags)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        log_energy = ref * (2 * cfg.std) + cfg.mean
        above_noise = (log_energy.max(-1, keepdims=True) - log_energy) < NOISE_FLOOR_NATS
        print(f"{task}: {above_noise.mean():.4f} of the bins above the float32 noise floor, "
              f"{int(flags.sum())}/{len(flags)} segments in float64")
        scale = np.abs(ref).max()
        # Strict bound where float32 rounding cannot explain a difference.
        assert_parity(np.where(above_noise, ours, ref), ref, f"{task}_fbank (above noise floor)")
        assert_parity(ours, ref, f"{task}_fbank (all bins)", rtol=NOISE_FLOOR_RTOL)
        assert np.abs(ours - ref).max() / scale < NOISE_FLOOR_RTOL


@pytest.mark.parity
def test_segmentation_of_real_media_matches_original(fixtures_dir, manifest):
    arrays = _npz(fixtures_dir)
    media = _media_root(fixtures_dir)
    inputs = manifest["fixtures"]["beats"]["config"]["inputs"]
    assert {i["task"] for i in inputs} == set(_tasks(arrays))
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


def test_fbank_framing_floor_and_tone():
    cfg = FbankConfig()
    assert cfg.window_size == 400 and cfg.window_shift == 160 and cfg.fft_size == 512
    assert beats_fbank(np.zeros(16000, np.float32)).shape == (98, 128)
    assert beats_fbank(np.zeros(32000, np.float32)).shape == (198, 128)
    assert beats_fbank(np.zeros(399, np.float32)).shape == (0, 128)
    silent = beats_fbank(np.zeros((2, 1600), np.float32))
    np.testing.assert_allclose(silent, (np.log(np.float32(LOG_FLOOR)) - cfg.mean) / (2 * cfg.std), rtol=1e-6)

    t = np.arange(16000) / 16000
    tone = beats_fbank((0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    peak_bin = int(np.bincount(tone.argmax(-1)).argmax())
    peak_freq = mel_banks(cfg)[peak_bin].argmax() * cfg.sample_rate / cfg.fft_size
    assert abs(peak_freq - 1000) < 60, peak_freq

    # A float64 waveform is processed in float64 (Crab's padded segments), the output float32.
    wave = np.random.default_rng(1).uniform(-0.5, 0.5, 4000)
    f64 = beats_fbank(wave)
    f32 = beats_fbank(wave.astype(np.float32))
    assert f64.dtype == np.float32
    np.testing.assert_allclose(f64, beats_fbank(wave.astype(np.float32), computed_in_float64=True), atol=1e-6)
    assert np.abs(f64 - f32).max() < 1e-4
    with pytest.raises(TypeError):
        kaldi_fbank(np.zeros(1000, np.int16))


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
    import soundfile as sf

    stereo = np.stack([np.full(8000, 0.25), np.full(8000, -0.75)], 1)
    path = tmp_path / "stereo_8k.wav"
    sf.write(path, stereo, 8000)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] - 16000) <= 1
    np.testing.assert_allclose(audio[2000:14000], -0.25, atol=1e-3)  # channel average
