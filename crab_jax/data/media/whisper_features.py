"""Whisper log-mel features as Crab+ (Qwen2.5-Omni's ``WhisperFeatureExtractor``) computes them.

Host-side NumPy, no torch, no file downloads. The original pads every clip to
``CHUNK_SECONDS`` (300 s, ``padding="max_length"``) and then computes::

    y      = clip zero-padded (or truncated) to N = 300 s * 16 kHz samples
    z      = y reflect-padded by n_fft/2 = 200 samples on both sides (torch.stft center=True;
             the end reflects the zero padding, so it sees zeros)
    frame t = z[160 t : 160 t + 400] * hann(400, periodic)          t = 0 .. N/160 (last dropped)
    power  = |rfft(frame)|^2                                         [frames, 201]
    mel    = power @ slaney_mel_filters                              [frames, 128]
    logmel = log10(max(mel, 1e-10))
    logmel = max(logmel, max(logmel over all N/160 frames) - 8)
    out    = (logmel + 4) / 4,   stored mel-major [128, N/160]

and marks ``ceil(n / 160)`` frames valid (``feature_attention_mask``). Only valid frames
reach the model, so :func:`log_mel` computes the frames that see the clip and no more, but
reproduces the global maximum of the padded clip: frame ``t`` spans ``y[160 t - 200,
160 t + 200)``, so the first one or two frames past the valid ones still hold the clip's
last samples, near their window's centre, and can be the loudest frame of all (e.g. a click
at the very end); they are computed for the max. Every later frame is all zeros, i.e.
``log10(1e-10) = -10``, which never exceeds the max (every value is clamped at -10), so
those frames need no computing; they hold ``(max(-10, max - 8) + 4) / 4``.

Precision: computed in float64 and returned as float32 (the original runs torch in float32;
the two agree to ~1e-6 of the largest magnitude).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16000     # Hz, every Crab+ audio is decoded to this
N_FFT = 400             # 25 ms window
HOP_LENGTH = 160        # 10 ms hop: one feature frame per 160 samples
N_MELS = 128            # Qwen2.5-Omni's feature_size
CHUNK_SECONDS = 300     # the extractor pads (and truncates) every clip to this many seconds
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE     # 4,800,000
MAX_FRAMES = N_SAMPLES // HOP_LENGTH        # 30,000 feature frames per padded clip
LOG_FLOOR = 1e-10       # mel energies are clamped here before log10
DYNAMIC_RANGE = 8.0     # log10 units kept below the clip's maximum


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    safe = np.maximum(hz, min_log_hz)  # log of the linear branch's values is never used
    return np.where(hz >= min_log_hz, min_log_mel + np.log(safe / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel`."""
    mel = np.asarray(mel, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), mel * f_sp)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                f_min: float = 0.0, f_max: float = SAMPLE_RATE / 2) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filters (librosa / HF ``mel_filter_bank``).

    Returns:
      ``[n_fft // 2 + 1, n_mels]`` float64 (read-only; cached): column ``m`` is a triangle
      from edge ``m`` to edge ``m + 2`` of ``n_mels + 2`` edges equally spaced in mel, scaled
      by ``2 / (width in Hz)`` so every filter has unit area.
    """
    fft_hz = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    width = np.diff(edges)                               # [n_mels + 1]
    offset = edges[None, :] - fft_hz[:, None]            # [bins, n_mels + 2]
    rising = -offset[:, :-2] / width[:-1]
    falling = offset[:, 2:] / width[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))
    filters.flags.writeable = False
    return filters


@functools.lru_cache(maxsize=4)
def hann_window(n: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window`` default): ``[n]`` float64."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.flags.writeable = False
    return w


def num_frames(num_samples: int) -> int:
    """Valid feature frames of a clip: ``ceil(n / 160)``, capped at the 300-s chunk."""
    return min(-(-int(num_samples) // HOP_LENGTH), MAX_FRAMES)


def _log_mel_frames(padded: np.ndarray, count: int) -> np.ndarray:
    """``log10(max(mel, 1e-10))`` of frames ``0 .. count-1`` of an already centre-padded signal.

    Args:
      padded: ``[>= (count - 1) * 160 + 400]`` float64 (reflect-padded at the front).
    Returns:
      ``[count, n_mels]`` float64.
    """
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:count]
    power = np.abs(np.fft.rfft(frames * hann_window(), axis=-1)) ** 2   # [count, 201]
    return np.log10(np.maximum(power @ mel_filters(), LOG_FLOOR))


def _features(waveform: np.ndarray, count: int) -> np.ndarray:
    """Frames ``0 .. count-1`` of the original's output for one clip, ``[count, n_mels]`` float64."""
    x = np.asarray(waveform, np.float32).astype(np.float64)  # the extractor casts to float32 first
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"waveform must be a non-empty [samples] array, got shape {x.shape}")
    if not 1 <= count <= MAX_FRAMES:
        raise ValueError(f"frame count {count} must be in [1, {MAX_FRAMES}]")
    x = x[:N_SAMPLES]
    n, half = x.shape[0], N_FFT // 2
    # Frames that see any sample of the clip (160 t - 200 < n): the later ones are all zero.
    seen = min(-(-(n + half) // HOP_LENGTH), MAX_FRAMES)
    needed = max(seen, count)
    # y = the clip zero-padded far enough for every computed frame, or to the whole chunk
    # (then the end reflection is the real one; otherwise it reflects zeros).
    length = min(N_SAMPLES, (needed - 1) * HOP_LENGTH + half + 1)
    y = np.zeros(max(length, half + 1), np.float64)
    y[:n] = x
    tail = y[-half - 1:-1][::-1] if length == N_SAMPLES else np.zeros(half)
    spec = _log_mel_frames(np.concatenate([y[1:half + 1][::-1], y, tail]), needed)
    # The all-zero frames (log10(1e-10)) cannot raise the max: every value is >= that.
    return (np.maximum(spec[:count], spec.max() - DYNAMIC_RANGE) + 4.0) / 4.0


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """Crab+'s Whisper log-mel of one clip, valid frames only.

    Args:
      waveform: ``[n]`` mono samples at 16 kHz (float32 or float64; n >= 1). A clip over
        300 s is truncated to 300 s, as the original's ``truncation=True`` does.
    Returns:
      ``[N_MELS, num_frames(n)]`` float32, **mel-major** (the layout of the original's
      ``input_features[i]`` and of ``crab_jax.models.qwen_audio.pack_audio`` /
      ``layout.thinker_batch``): the original's ``input_features[i][:, :ceil(n / 160)]``.
    """
    return _features(waveform, num_frames(np.shape(waveform)[0])).T.astype(np.float32)


def batch_log_mel(waveforms: Sequence[np.ndarray], frames: int | None = None) -> dict[str, np.ndarray]:
    """Several clips as the processor batches them, cut to ``frames`` feature frames.

    Args:
      waveforms: clips ``[n_i]`` at 16 kHz, in batch order.
      frames: the feature length ``T`` (None: the longest clip's valid frames; the original
        uses ``MAX_FRAMES``; its first ``T`` frames are reproduced for any ``T``).
    Returns:
      ``input_features [n_audio, N_MELS, T]`` float32 (mel-major) and
      ``feature_attention_mask [n_audio, T]`` int32 (1 on the first ``ceil(n_i / 160)``
      frames): the keys ``crab_jax.families.crab_plus.layout.thinker_batch`` reads.
    """
    if not waveforms:
        raise ValueError("batch_log_mel needs at least one waveform")
    valid = [num_frames(np.shape(w)[0]) for w in waveforms]
    t = max(valid) if frames is None else int(frames)
    if t < max(valid):
        raise ValueError(f"frames={t} is shorter than a clip's {max(valid)} valid frames")
    feats = np.stack([_features(w, t).T for w in waveforms]).astype(np.float32)
    mask = (np.arange(t)[None, :] < np.array(valid)[:, None]).astype(np.int32)
    return {"input_features": feats, "feature_attention_mask": mask}
