"""Audio decoding and Crab's per-task segmentation (host-side NumPy).

Crab decodes every clip to mono float32 at 16 kHz (``librosa.load``), cuts it into
one-second (or two-second) segments with task-specific rules, and turns each segment into
a BEATs filterbank. With ``n = int(len / tot)`` samples per "second":

* clip tasks (AVE, AVVP, Ref-AVS; ``tot = 10``): segment ``i`` = ``[i n, (i+1) n)``, i < tot,
  zero-padded at the end if short;
* frame tasks (S4, MS3, ARIG: ``tot = 5``; AVSS: ``tot = 10``): one segment
  ``[idx n, (idx+1) n)`` at the frame number ``idx``; only ARIG zero-pads a short one;
* AVQA (``tot = 60``): ten 2-second windows ``[int(max(0, c-0.5) n), int(min(60, c+1.5) n))``
  around c = 0, 6, ..., 54; a window that starts before 0 is left-padded, one that ends
  after 60 right-padded, to ``2 n`` samples.

Crab pads with ``np.zeros(..., dtype=float)``, which silently promotes that segment to
float64, so its filterbank is computed in float64; :class:`AudioSegments` records this per
segment so the port reproduces it (the effect is at float32 rounding level).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import librosa
import numpy as np

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media.fbank import DEFAULT_FBANK, FbankConfig, beats_fbank

SAMPLE_RATE = 16000


class AudioFileError(BadRecordError):
    """An audio file that exists but cannot be used (empty, undecodable, no samples)."""


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decodes ``path`` to mono float32 at ``sr`` Hz (``librosa.load(sr=sr, mono=True)``).

    Returns:
      ``[samples]`` float32.
    Raises:
      FileNotFoundError: no such file. AudioFileError: 0-byte, undecodable or empty audio.
      Both messages name the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such audio file")
    if os.path.getsize(path) == 0:
        raise AudioFileError(path, "audio file is empty (0 bytes)")
    try:
        audio, _ = librosa.load(path, sr=sr, mono=True)
    except Exception as e:  # soundfile / audioread raise many unrelated types
        raise AudioFileError(path, f"cannot decode audio ({type(e).__name__}: {e})") from e
    if audio.size == 0:
        raise AudioFileError(path, "decoded to 0 samples")
    return np.asarray(audio, np.float32)


@dataclasses.dataclass(frozen=True)
class AudioSegments:
    """Equal-length waveform segments of one clip.

    Attributes:
      waveforms: ``[segments, samples]`` float32 (zero padding is exact in float32).
      computed_in_float64: ``[segments]`` bool, True where Crab's padding promoted the
        segment to float64 (its filterbank is then computed in float64).
    """

    waveforms: np.ndarray
    computed_in_float64: np.ndarray

    def fbank(self, cfg: FbankConfig = DEFAULT_FBANK) -> np.ndarray:
        """``[segments, frames, mel]`` float32 BEATs filterbanks."""
        return beats_fbank(self.waveforms, cfg, computed_in_float64=self.computed_in_float64)


def samples_per_unit(num_samples: int, tot: int) -> int:
    """Crab's ``int(len / tot)`` (float division, truncated)."""
    return int(num_samples / tot)


def _stack(segments: Sequence[tuple[np.ndarray, bool]]) -> AudioSegments:
    waves = [np.asarray(w, np.float32) for w, _ in segments]
    lengths = {w.shape[0] for w in waves}
    if len(lengths) != 1:
        raise ValueError(f"segments of different lengths {sorted(lengths)} cannot be batched")
    return AudioSegments(np.stack(waves), np.array([f for _, f in segments], bool))


def _pad(segment: np.ndarray, length: int, *, front: bool) -> np.ndarray:
    pad = np.zeros(length - segment.shape[0], np.float32)
    return np.concatenate([pad, segment] if front else [segment, pad])


def segment_clip(audio: np.ndarray, tot: int = 10) -> AudioSegments:
    """Clip tasks: ``tot`` consecutive segments of ``n = int(len / tot)`` samples."""
    n = samples_per_unit(audio.shape[0], tot)
    out = []
    for i in range(tot):
        seg = audio[int(i * n): int(n * min(tot, i + 1))]
        padded = seg.shape[0] < n
        out.append((_pad(seg, n, front=False) if padded else seg, padded))
    return _stack(out)


def segment_at_frame(audio: np.ndarray, idx: int, tot: int = 5, *, pad_short: bool = False) -> AudioSegments:
    """Frame tasks: the one segment ``[idx n, (idx+1) n)`` of frame ``idx``.

    ``pad_short`` (ARIG) zero-pads a short segment to ``n``; the others keep it short,
    as Crab does.
    """
    n = samples_per_unit(audio.shape[0], tot)
    seg = audio[idx * n: (idx + 1) * n]
    padded = pad_short and seg.shape[0] < n
    return _stack([(_pad(seg, n, front=False) if padded else seg, padded)])


def segment_windows(
    audio: np.ndarray,
    tot: int = 60,
    centers: Sequence[float] = tuple(range(0, 60, 6)),
    before: float = 0.5,
    after: float = 1.5,
) -> AudioSegments:
    """AVQA: one ``(before + after)``-unit window around each centre, padded at the clip ends."""
    n = samples_per_unit(audio.shape[0], tot)
    length = int((before + after) * n)
    out = []
    for c in centers:
        start, end = max(0, c - before), min(tot, c + after)
        seg = audio[int(start * n): int(n * end)]
        # Crab pads (and so promotes to float64) whenever the window crosses an end,
        # even by zero samples.
        pad_front, pad_back = c - before < 0, c + after > tot
        if pad_front:
            seg = _pad(seg, length, front=True)
        if pad_back:
            seg = _pad(seg, length, front=False)
        out.append((seg, pad_front or pad_back))
    return _stack(out)


# task -> (segmenter(audio, idx), multi_segment). multi_segment tasks feed BEATs a
# [segments, frames, mel] stack (4-D after batching); the others one [frames, mel].
TaskRule = Callable[[np.ndarray, "int | None"], AudioSegments]


def _needs_idx(task: str, idx):
    if idx is None:
        raise ValueError(f"task {task!r} segments audio at a frame index: pass idx")
    return int(idx)


TASK_RULES: dict[str, tuple[TaskRule, bool, int]] = {
    "ave": (lambda a, idx: segment_clip(a, 10), True, 10),
    "avvp": (lambda a, idx: segment_clip(a, 10), True, 10),
    "ref-avs": (lambda a, idx: segment_clip(a, 10), True, 10),
    "s4": (lambda a, idx: segment_at_frame(a, _needs_idx("s4", idx), 5), False, 5),
    "ms3": (lambda a, idx: segment_at_frame(a, _needs_idx("ms3", idx), 5), False, 5),
    "arig": (lambda a, idx: segment_at_frame(a, _needs_idx("arig", idx), 5, pad_short=True), False, 5),
    "avss": (lambda a, idx: segment_at_frame(a, _needs_idx("avss", idx), 10), False, 10),
    "avqa": (lambda a, idx: segment_windows(a, 60), True, 60),
}


def canonical_task(task: str) -> str:
    """``'Ref_AVS'`` / ``'refavs'`` -> ``'ref-avs'`` etc.; raises for an unknown task."""
    key = task.strip().lower().replace("_", "-")
    if key == "refavs":
        key = "ref-avs"
    if key not in TASK_RULES:
        raise ValueError(f"no audio segmentation rule for task {task!r}; known: {sorted(TASK_RULES)}")
    return key


def task_units(task: str) -> int:
    """The ``tot`` of a task's rule (units the clip is divided into)."""
    return TASK_RULES[canonical_task(task)][2]


def is_multi_segment(task: str) -> bool:
    return TASK_RULES[canonical_task(task)][1]


def segment_audio(task: str, audio: np.ndarray, idx: int | None = None) -> AudioSegments:
    """Applies ``task``'s rule to a decoded ``[samples]`` waveform."""
    rule, _, _ = TASK_RULES[canonical_task(task)]
    return rule(np.asarray(audio, np.float32), idx)


def task_audio_fbank(task: str, path: str | os.PathLike, idx: int | None = None,
                     cfg: FbankConfig = DEFAULT_FBANK) -> np.ndarray:
    """Crab's ``data['audio']`` for one sample: ``[segments, frames, mel]`` for multi-segment
    tasks (AVE, AVVP, Ref-AVS, AVQA), ``[frames, mel]`` for single-frame tasks."""
    fb = segment_audio(task, load_audio(path), idx).fbank(cfg)
    return fb if is_multi_segment(task) else fb[0]
