"""Helpers of the synthetic dataset tests: a small generation, and reading its media back."""

from __future__ import annotations

import pathlib

import av
import numpy as np
from PIL import Image

from crab_jax.data.media.audio import load_audio
from crab_jax.data.synthetic import generate as gen
from crab_jax.data.synthetic import scenes

NUM_TRAIN, NUM_TEST = 3, 12
ALL_TASKS_TRAIN, ALL_TASKS_TEST = 2, 3   # the every-task dataset (conftest ``dataset_all_tasks``)


def generate_small(root: pathlib.Path, seed: int, **kw) -> dict:
    """A dataset of NUM_TRAIN / NUM_TEST records per task (unless given), no progress bar."""
    kw.setdefault("num_train", NUM_TRAIN)
    kw.setdefault("num_test", NUM_TEST)
    return gen.generate(root, seed, progress=False, **kw)


def decode_mp4(path: pathlib.Path) -> tuple[np.ndarray, float]:
    """All frames ``[T, H, W, 3]`` uint8 and the stream duration in seconds."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
        duration = float(stream.duration * stream.time_base)
    return frames, duration


def read_image(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def decode_any(path: pathlib.Path) -> np.ndarray:
    suffix = path.suffix
    if suffix == ".mp4":
        return decode_mp4(path)[0]
    if suffix in (".wav", ".mp3"):
        return load_audio(path)
    if suffix in (".jpg", ".png"):
        return read_image(path)
    return np.frombuffer(path.read_bytes(), np.uint8)


def files_of(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def colour_mask(frame: np.ndarray, cls: scenes.ObjectClass, tol: int = 60) -> np.ndarray:
    """Pixels whose colour is within ``tol`` (every channel) of the class colour."""
    return (np.abs(frame.astype(np.int32) - np.array(cls.colour)) <= tol).all(-1)


def present_classes(frame: np.ndarray, min_pixels: int = 10) -> dict[int, np.ndarray]:
    """class index -> its pixel mask, for the classes visible in ``frame``."""
    out = {}
    for k, cls in enumerate(scenes.CLASSES):
        m = colour_mask(frame, cls)
        if m.sum() >= min_pixels:
            out[k] = m
    return out


def tone_class(audio: np.ndarray) -> int:
    """Class whose tone frequency is nearest the spectrum's peak."""
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak = np.fft.rfftfreq(len(audio), 1 / scenes.SAMPLE_RATE)[int(np.argmax(spec))]
    return int(np.argmin([abs(np.log(peak / c.tone_hz)) for c in scenes.CLASSES]))


def loud_units(audio: np.ndarray, units: int) -> np.ndarray:
    n = len(audio) // units
    rms = np.sqrt((audio[: n * units].reshape(units, n) ** 2).mean(1))
    return rms > 0.05
