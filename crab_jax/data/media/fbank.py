"""Kaldi-compatible log-mel filterbank, BEATs flavour (host-side NumPy, no torch).

Reproduces ``torchaudio.compliance.kaldi.fbank`` with the options BEATs / Crab use, followed
by BEATs' normalisation::

    wave   = waveform * 32768                                   # int16 scale
    frames = snip-edges framing, 400-sample windows every 160 samples
    frame -= mean(frame)                                         # DC removal
    frame[j] -= 0.97 * frame[max(j - 1, 0)]                      # pre-emphasis
    frame *= hann(400, symmetric) ** 0.85                        # "povey" window
    power  = |rfft(frame zero-padded to 512)|^2                  # [frames, 257]
    fbank  = log(max(power @ mel_banks.T, eps_float32))          # [frames, 128]
    fbank  = (fbank - 15.41663) / (2 * 6.55582)

Precision follows torch: a float32 waveform is processed in float32 end to end; a float64
waveform (Crab's dataset code produces those whenever it zero-pads a segment) in float64. In
both cases the mel banks are built in float32 (torch's default dtype) and the log floor is
float32's eps, exactly as torchaudio does. The output is always float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import numpy as np

# float32 machine epsilon: torchaudio floors the mel energies at this for every dtype.
LOG_FLOOR = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class FbankConfig:
    """BEATs filterbank settings; the normalisation constants are BEATs' AudioSet statistics."""

    num_mel_bins: int = 128
    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means nyquist + high_freq (Kaldi convention)
    povey_exponent: float = 0.85
    waveform_scale: float = 32768.0
    mean: float = 15.41663
    std: float = 6.55582

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        """Next power of two of the window (Kaldi ``round_to_power_of_two``)."""
        return 1 << (self.window_size - 1).bit_length()

    def num_frames(self, num_samples: int) -> int:
        """Frames with snipped edges: ``1 + (samples - window) // shift`` (0 if too short)."""
        if num_samples < self.window_size:
            return 0
        return 1 + (num_samples - self.window_size) // self.window_shift

    @classmethod
    def from_dict(cls, cfg: Mapping) -> "FbankConfig":
        """From a dict such as the fixture manifest's ``fbank`` entry (unknown keys ignored)."""
        aliases = {"sample_frequency": "sample_rate", "frame_length": "frame_length_ms",
                   "frame_shift": "frame_shift_ms"}
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in cfg.items():
            key = aliases.get(key, key)
            if key in fields:
                kwargs[key] = value
        return cls(**kwargs)


DEFAULT_FBANK = FbankConfig()


def _mel_scale(freq):
    return 1127.0 * np.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(cfg: FbankConfig = DEFAULT_FBANK) -> np.ndarray:
    """Triangular Kaldi mel filters ``[num_mel_bins, fft_size // 2 + 1]`` float32.

    Built like torchaudio's ``get_mel_banks`` (float32 tensors, scalars from float64 math),
    plus the zero column for the Nyquist bin.
    """
    f32 = np.float32
    num_fft_bins = cfg.fft_size // 2
    nyquist = 0.5 * cfg.sample_rate
    high_freq = cfg.high_freq if cfg.high_freq > 0.0 else cfg.high_freq + nyquist
    mel_low = 1127.0 * math.log(1.0 + cfg.low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    mel_delta = (mel_high - mel_low) / (cfg.num_mel_bins + 1)

    bins = np.arange(cfg.num_mel_bins, dtype=f32)[:, None]
    left = f32(mel_low) + bins * f32(mel_delta)
    center = f32(mel_low) + (bins + f32(1.0)) * f32(mel_delta)
    right = f32(mel_low) + (bins + f32(2.0)) * f32(mel_delta)
    fft_bin_width = f32(cfg.sample_rate / cfg.fft_size)
    mel = _mel_scale(fft_bin_width * np.arange(num_fft_bins, dtype=f32))[None, :].astype(f32)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(f32(0.0), np.minimum(up, down)).astype(f32)
    banks = np.pad(banks, ((0, 0), (0, 1)))
    banks.setflags(write=False)
    return banks


@functools.lru_cache(maxsize=8)
def povey_window(window_size: int, exponent: float, dtype: str) -> np.ndarray:
    """Symmetric Hann window to the power ``exponent``, built in ``dtype`` like torch."""
    dt = np.dtype(dtype)
    n = np.arange(window_size, dtype=dt)
    hann = np.cos(n * dt.type(2.0 * math.pi / (window_size - 1))) * dt.type(-0.5) + dt.type(0.5)
    window = (hann ** dt.type(exponent)).astype(dt)
    window.setflags(write=False)
    return window


def kaldi_fbank(waveform: np.ndarray, cfg: FbankConfig = DEFAULT_FBANK) -> np.ndarray:
    """Log-mel energies of already-scaled waveforms, in the waveform's float dtype.

    Args:
      waveform: ``[..., samples]`` float32 or float64 (already multiplied by 32768).
    Returns:
      ``[..., frames, num_mel_bins]`` in the same dtype, not normalised.
    """
    waveform = np.asarray(waveform)
    if waveform.dtype not in (np.float32, np.float64):
        raise TypeError(f"kaldi_fbank: expected a float32 or float64 waveform, got {waveform.dtype}")
    dt = waveform.dtype
    num_frames = cfg.num_frames(waveform.shape[-1])
    if num_frames == 0:
        return np.zeros(waveform.shape[:-1] + (0, cfg.num_mel_bins), dt)
    windows = np.lib.stride_tricks.sliding_window_view(waveform, cfg.window_size, axis=-1)
    frames = windows[..., : num_frames * cfg.window_shift : cfg.window_shift, :]  # [..., m, 400]
    frames = frames - frames.mean(axis=-1, keepdims=True, dtype=dt)
    previous = np.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - dt.type(cfg.preemphasis) * previous
    frames = frames * povey_window(cfg.window_size, cfg.povey_exponent, dt.name)
    spectrum = np.abs(np.fft.rfft(frames, n=cfg.fft_size, axis=-1)) ** 2  # [..., m, fft/2+1]
    spectrum = spectrum.astype(dt, copy=False)
    energies = spectrum @ mel_banks(cfg).astype(dt).T
    return np.log(np.maximum(energies, dt.type(LOG_FLOOR)))


def beats_fbank(
    waveforms: np.ndarray,
    cfg: FbankConfig = DEFAULT_FBANK,
    *,
    computed_in_float64: np.ndarray | bool | None = None,
) -> np.ndarray:
    """Normalised BEATs filterbank of each waveform (Crab's ``preprocess``).

    Args:
      waveforms: ``[samples]`` or ``[segments, samples]`` in [-1, 1]. A float64 array is
        processed in float64, a float32 one in float32.
      computed_in_float64: ``[segments]`` bool (or one bool): force float64 for those rows,
        reproducing Crab's zero-padded segments that numpy promoted to float64.
    Returns:
      ``[frames, mel]`` or ``[segments, frames, mel]`` float32.
    """
    waveforms = np.asarray(waveforms)
    if not np.issubdtype(waveforms.dtype, np.floating):
        raise TypeError(f"beats_fbank: expected float waveforms, got {waveforms.dtype}")
    if waveforms.dtype not in (np.float32, np.float64):
        waveforms = waveforms.astype(np.float32)
    single = waveforms.ndim == 1
    batch = waveforms[None] if single else waveforms
    if computed_in_float64 is None:
        as_f64 = np.full(batch.shape[:1], batch.dtype == np.float64)
    else:
        as_f64 = np.broadcast_to(np.asarray(computed_in_float64, bool), batch.shape[:1])

    out = np.empty(batch.shape[:1] + (cfg.num_frames(batch.shape[-1]), cfg.num_mel_bins), np.float32)
    for dt, rows in ((np.float32, ~as_f64), (np.float64, as_f64)):
        if rows.any():
            wave = batch[rows].astype(dt) * dt(cfg.waveform_scale)
            fb = kaldi_fbank(wave, cfg)
            out[rows] = ((fb - dt(cfg.mean)) / dt(2.0 * cfg.std)).astype(np.float32)
    return out[0] if single else out
