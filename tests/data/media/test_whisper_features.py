"""Crab+'s Whisper log-mel (numpy) vs the original's processor outputs and HF's extractor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crab_jax.data.media import whisper_features as wf
from tests.conftest import assert_parity

TINY_MODEL = "tiny_model/Qwen2.5-Omni-tiny"


@pytest.fixture(scope="module")
def av(crab_plus_fixtures_dir, crab_plus_manifest):
    """The thinker_av arrays, its tolerance and the per-audio waveform keys in batch order."""
    entry = crab_plus_manifest["fixtures"]["thinker_av"]
    arrays = np.load(crab_plus_fixtures_dir / "thinker_av" / "thinker_av.npz")
    keys = [f"s{i}_audio{j}_waveform" for i, sample in enumerate(entry["config"]["media_decode"])
            for j in range(len(sample["audios"]))]
    tol = entry["suggested_tolerance"]["suggested_atol_relative_to_max_abs_of_reference"]
    return arrays, keys, tol


@pytest.fixture(scope="module")
def preprocessor_config(crab_plus_fixtures_dir):
    with open(crab_plus_fixtures_dir / TINY_MODEL / "preprocessor_config.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def hf_extractor(crab_plus_fixtures_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperFeatureExtractor.from_pretrained(crab_plus_fixtures_dir / TINY_MODEL)


def hf_log_mel(extractor, waveform):
    """HF's ``input_features [128, 30000]`` and valid frame count for one clip (torch path)."""
    out = extractor(waveform, sampling_rate=extractor.sampling_rate, padding="max_length",
                    return_attention_mask=True, return_tensors="np")
    return out["input_features"][0], int(out["attention_mask"][0].sum())


def variant(x, *, reflect=True, peak_over_valid_only=False):
    """An independent (np.pad-based) rebuild of the rule with one step switchable, for controls.

    Returns ``[128, ceil(n / 160)]``.
    """
    n = x.shape[0]
    valid = -(-n // wf.HOP_LENGTH)
    y = np.zeros((valid + 4) * wf.HOP_LENGTH, np.float64)   # past the clip: the 300-s zero padding
    y[:n] = x
    z = np.pad(y, wf.N_FFT // 2, mode="reflect" if reflect else "constant")
    frames = np.lib.stride_tricks.sliding_window_view(z, wf.N_FFT)[::wf.HOP_LENGTH][: valid + 3]
    spec = np.abs(np.fft.rfft(frames * wf.hann_window())) ** 2 @ wf.mel_filters()
    spec = np.log10(np.maximum(spec, wf.LOG_FLOOR))
    peak = spec[:valid].max() if peak_over_valid_only else spec.max()
    return ((np.maximum(spec[:valid], peak - wf.DYNAMIC_RANGE) + 4) / 4).T


def test_constants_match_the_preprocessor_config(preprocessor_config):
    c = preprocessor_config
    assert (wf.SAMPLE_RATE, wf.HOP_LENGTH, wf.N_FFT, wf.N_MELS) == (
        c["sampling_rate"], c["hop_length"], c["n_fft"], c["feature_size"])
    assert (wf.CHUNK_SECONDS, wf.N_SAMPLES, wf.MAX_FRAMES) == (c["chunk_length"], c["n_samples"], c["nb_max_frames"])
    assert c["dither"] == 0.0  # the port has no dithering


def test_mel_filters_match_hf_and_librosa():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ours = wf.mel_filters()
    hf = audio_utils.mel_filter_bank(num_frequency_bins=wf.N_FFT // 2 + 1, num_mel_filters=wf.N_MELS,
                                     min_frequency=0.0, max_frequency=wf.SAMPLE_RATE / 2,
                                     sampling_rate=wf.SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    librosa = pytest.importorskip("librosa")
    lr = librosa.filters.mel(sr=wf.SAMPLE_RATE, n_fft=wf.N_FFT, n_mels=wf.N_MELS, fmin=0.0,
                             fmax=wf.SAMPLE_RATE / 2, htk=False, norm="slaney").T
    assert ours.shape == hf.shape == (wf.N_FFT // 2 + 1, wf.N_MELS)
    assert_parity(ours, hf, "mel filters vs HF", 1e-12)
    assert_parity(ours, lr, "mel filters vs librosa", 1e-6)  # librosa builds them in float32


def test_valid_frames_match_the_original(av):
    arrays, keys, tol = av
    feats, mask = arrays["input_features"], arrays["feature_attention_mask"]
    assert len(keys) == feats.shape[0]
    for n, key in enumerate(keys):
        wave = arrays[key]
        valid = int(mask[n].sum())
        assert wf.num_frames(wave.shape[0]) == valid
        ours = wf.log_mel(wave)
        assert ours.dtype == np.float32 and ours.shape == (wf.N_MELS, valid)
        assert_parity(ours, feats[n][:, :valid], f"log-mel {key} (valid frames)", tol)


def test_batch_reproduces_the_whole_padded_features(av):
    # Every one of the 30,000 frames: the tail frames that see the clip and the constant rest.
    arrays, keys, tol = av
    out = wf.batch_log_mel([arrays[k] for k in keys], frames=arrays["input_features"].shape[2])
    np.testing.assert_array_equal(out["feature_attention_mask"], arrays["feature_attention_mask"])
    assert_parity(out["input_features"], arrays["input_features"], "batched log-mel (all frames)", tol)


def test_matches_hf_on_a_random_waveform(hf_extractor, av):
    tol = av[2]
    x = (0.3 * np.random.default_rng(0).standard_normal(wf.SAMPLE_RATE + 1234)).astype(np.float32)
    ref, valid = hf_log_mel(hf_extractor, x)
    ours = wf.log_mel(x)
    assert ours.shape == (wf.N_MELS, valid)
    assert_parity(ours, ref[:, :valid], "log-mel vs HF (random 1.08 s)", tol)
    # The harness for the negative controls below is itself the rule.
    assert_parity(variant(x), ref[:, :valid], "control harness vs HF", tol)
    # Negative control: zero padding instead of reflect padding at the start.
    with pytest.raises(AssertionError):
        assert_parity(variant(x, reflect=False), ref[:, :valid], "no reflect padding vs HF", tol)


def test_the_frame_past_the_valid_ones_can_set_the_max(hf_extractor, av):
    # A click on the last sample sits near the centre of frame ceil(n/160) (not valid) and
    # near the edge of the last valid frame: the padded clip's max comes from outside the
    # valid frames, and with it the floor that silence takes.
    tol = av[2]
    valid = 10
    x = np.zeros(valid * wf.HOP_LENGTH - 19, np.float32)
    x[-1] = 1.0
    ref, n_ref = hf_log_mel(hf_extractor, x)
    assert n_ref == valid
    assert_parity(wf.log_mel(x), ref[:, :valid], "log-mel vs HF (click at the end)", tol)
    with pytest.raises(AssertionError):
        assert_parity(variant(x, peak_over_valid_only=True), ref[:, :valid], "max over valid frames only", tol)


def test_long_clip_is_truncated_to_the_chunk():
    x = np.full(wf.N_SAMPLES + 3 * wf.HOP_LENGTH, 0.1, np.float32)
    x[::7] = -0.2
    assert wf.num_frames(x.shape[0]) == wf.MAX_FRAMES
    ours = wf.log_mel(x)
    assert ours.shape == (wf.N_MELS, wf.MAX_FRAMES)
    np.testing.assert_array_equal(ours, wf.log_mel(x[: wf.N_SAMPLES]))


def test_shapes_and_errors():
    assert [wf.num_frames(n) for n in (1, 160, 161, 16000)] == [1, 1, 2, 100]
    out = wf.batch_log_mel([np.ones(320, np.float32), np.ones(161, np.float32)], frames=5)
    assert out["input_features"].shape == (2, wf.N_MELS, 5)
    np.testing.assert_array_equal(out["feature_attention_mask"], [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    assert wf.batch_log_mel([np.ones(480, np.float32)])["input_features"].shape == (1, wf.N_MELS, 3)
    with pytest.raises(ValueError, match="shorter"):
        wf.batch_log_mel([np.ones(480, np.float32)], frames=2)
    with pytest.raises(ValueError, match="non-empty"):
        wf.log_mel(np.zeros(0, np.float32))
