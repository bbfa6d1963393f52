"""Crab+'s audio loading and per-task cropping (host-side NumPy; spec B.2, the original's
``process_audio_by_task``).

Every audio is decoded to mono float32 at 16 kHz (``librosa.load(sr=16000, mono=True)``,
:func:`crab_jax.data.media.audio.load_audio`), zero-padded at the end to at least 1 s, and
then cropped by its task into **one** waveform (segments are concatenated back), which the
Whisper feature extractor receives. With ``L`` the (padded) length and ``nps = int(L / tot)``
("samples per nominal second", not 16000):

========================================  ===================================================
task(s)                                   crop
========================================  ===================================================
avqa                                      tot=60; for c in 0, 6, ..., 54 the window
                                          ``[int(max(0, c-0.5) nps), int(min(60, c+1.5) nps))``;
                                          the first (c-0.5 < 0) is zero-padded at the front to
                                          ``2 nps``; the 10 windows concatenated (~20 s)
avqa_thu ks ucf avvp ave a2v v2a unav     tot=10, the 10 segments ``[i nps, (i+1) nps)``
avcap                                     concatenated = the clip cut to ``10 nps``
mer24 meld dfew mafw cremad               the first 4 s: 4 x 16000 samples, each second
                                          zero-padded at the end if short (= 64000 samples)
arig                                      tot=5, 5 segments = the clip cut to ``5 nps``
s4 ms3                                    tot=5, the segment ``[idx nps, min(5, idx+1) nps)``
                                          zero-padded / cut to exactly ``nps`` samples
ref_avs                                   the same with tot=10
========================================  ===================================================

``idx`` defaults to 0 (the original's ``ele.get('idx', 0)``); an ``idx`` at or past ``tot``
gives an all-zero segment, as the original's empty slice does. Zero padding is exact in
float32: the original's float64 padding only changes the dtype, and the feature extractor
casts back to float32, so everything here stays float32.
"""

from __future__ import annotations

import os

import numpy as np

from crab_jax.data.media.audio import load_audio
from crab_jax.data.media.whisper_features import SAMPLE_RATE
from crab_jax.data.records.crab_plus import CRAB_PLUS_EMOTION_TASKS, CRAB_PLUS_TASKS

# Tasks whose audio is the clip cut to 10 equal parts (the original's tot=10 list).
CLIP_TASKS = ("avqa_thu", "ks", "ucf", "avvp", "ave", "a2v", "v2a", "unav", "avcap")
AVQA_UNITS, AVQA_CENTRES, AVQA_BEFORE, AVQA_AFTER = 60, tuple(range(0, 60, 6)), 0.5, 1.5
EMOTION_SECONDS = 4
# task -> tot for the one-segment-at-idx tasks.
SEGMENT_UNITS = {"s4": 5, "ms3": 5, "ref_avs": 10}
ARIG_UNITS, CLIP_UNITS = 5, 10


def _zeros(n: int) -> np.ndarray:
    return np.zeros(max(n, 0), np.float32)


def pad_to_one_second(audio: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``[n] -> [max(n, sr)]``: a clip under 1 s zero-padded at the end."""
    audio = np.asarray(audio, np.float32)
    return np.concatenate([audio, _zeros(sr - audio.shape[0])])


def samples_per_unit(num_samples: int, tot: int) -> int:
    """The original's ``int(len / tot)`` (float division, truncated)."""
    return int(num_samples / tot)


def crop_equal_parts(audio: np.ndarray, tot: int) -> np.ndarray:
    """``tot`` segments of ``nps`` samples concatenated: ``[tot * nps]`` (the clip's start)."""
    return audio[: tot * samples_per_unit(audio.shape[0], tot)]


def crop_segment(audio: np.ndarray, idx: int, tot: int) -> np.ndarray:
    """The one segment of unit ``idx``: ``[nps]``, zero-padded at the end or cut."""
    nps = samples_per_unit(audio.shape[0], tot)
    seg = audio[int(max(0, idx) * nps): int(nps * min(tot, idx + 1))][:nps]
    return np.concatenate([seg, _zeros(nps - seg.shape[0])])


def crop_avqa(audio: np.ndarray) -> np.ndarray:
    """AVQA's ten 2-unit windows (tot=60) concatenated: ``[~10 * 2 * nps]``.

    Only windows crossing an end are padded to ``2 nps`` (front for the start, back for the
    end); the others keep their slice's length, as the original does.
    """
    nps = samples_per_unit(audio.shape[0], AVQA_UNITS)
    out = []
    for c in AVQA_CENTRES:
        start, end = max(0, c - AVQA_BEFORE), min(AVQA_UNITS, c + AVQA_AFTER)
        seg = audio[int(start * nps): int(nps * end)]
        pad = _zeros(int((AVQA_BEFORE + AVQA_AFTER) * nps) - seg.shape[0])
        if c - AVQA_BEFORE < 0:
            seg = np.concatenate([pad, seg])
        elif c + AVQA_AFTER > AVQA_UNITS:
            seg = np.concatenate([seg, pad])
        out.append(seg)
    return np.concatenate(out)


def crop_first_seconds(audio: np.ndarray, seconds: int = EMOTION_SECONDS, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The first ``seconds`` s as ``seconds * sr`` samples, zero-padded at the end."""
    head = audio[: seconds * sr]
    return np.concatenate([head, _zeros(seconds * sr - head.shape[0])])


def crop_audio(audio: np.ndarray, task: str | None, idx: int | None = None) -> np.ndarray:
    """The original's ``process_audio_by_task``: a decoded ``[n]`` clip -> the cropped ``[m]``.

    Args:
      audio: ``[n]`` mono samples at 16 kHz.
      task: a Crab+ task name (``CRAB_PLUS_TASKS``), or None for an item without a task
        (then only the 1-s padding applies, as in the original).
      idx: the frame / segment index for s4, ms3 and ref_avs (None: 0); ignored otherwise.
    Returns:
      ``[m]`` float32.
    Raises:
      ValueError for a task name the original does not know (it would silently skip cropping).
    """
    audio = pad_to_one_second(audio)
    if task is None:
        return audio
    if task not in CRAB_PLUS_TASKS:
        raise ValueError(f"no Crab+ audio crop rule for task {task!r}; known: {CRAB_PLUS_TASKS}")
    if task == "avqa":
        return crop_avqa(audio)
    if task in CLIP_TASKS:
        return crop_equal_parts(audio, CLIP_UNITS)
    if task in CRAB_PLUS_EMOTION_TASKS:
        return crop_first_seconds(audio)
    if task == "arig":
        return crop_equal_parts(audio, ARIG_UNITS)
    return crop_segment(audio, 0 if idx is None else int(idx), SEGMENT_UNITS[task])


def concat_audios(*waveforms: np.ndarray) -> np.ndarray:
    """v2a: the cropped audios joined in time into one ``[sum n_i]`` float32 waveform."""
    if not waveforms:
        raise ValueError("concat_audios needs at least one waveform")
    return np.concatenate([np.asarray(w, np.float32) for w in waveforms])


def load_task_audio(path: str | os.PathLike, task: str | None, idx: int | None = None) -> np.ndarray:
    """Decode ``path`` (16 kHz mono) and crop it for ``task``: ``[m]`` float32, what the
    original's feature extractor receives for this audio item."""
    return crop_audio(load_audio(path, SAMPLE_RATE), task, idx)
