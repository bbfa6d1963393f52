"""Rendering of a synthetic :class:`~crab_jax.data.synthetic.scenes.Clip`: frames, the sounding
object's masks, its box, and the audio track (pure functions of the clip, no files)."""

from __future__ import annotations

import math

import numpy as np

from crab_jax.data.synthetic.scenes import CLASSES, FRAME_SIZE, SAMPLE_RATE, Clip

BOX_SCALE = 224            # ARIG boxes are given in 224 x 224 frame coordinates
NOISE_STD = 0.002
FADE_SAMPLES = 80          # 5 ms linear fade in / out of a tone (no clicks)


def shape_mask(shape: str, cx: int, cy: int, r: int, size: int = FRAME_SIZE) -> np.ndarray:
    """``[size, size]`` bool: pixels (integer centres) covered by ``shape`` of radius ``r`` at ``(cx, cy)``."""
    y, x = np.mgrid[0:size, 0:size]
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # apex up, base at cy + r, base half-width r
        return (dy >= -r) & (dy <= r) & (2 * np.abs(dx) <= dy + r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "cross":
        w = r / 3
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"shape_mask: unknown shape {shape!r}; known: {sorted({c.shape for c in CLASSES})}")


def track_masks(clip: Clip, size: int = FRAME_SIZE) -> np.ndarray:
    """``[frames, tracks, size, size]`` bool: each object's pixels per frame (empty when invisible)."""
    out = np.zeros((clip.num_frames, len(clip.tracks), size, size), bool)
    for k in range(clip.num_frames):
        for j, tr in enumerate(clip.tracks):
            if tr.visible[0] <= k < tr.visible[1]:
                cx, cy = tr.centre(k, clip.num_frames)
                out[k, j] = shape_mask(CLASSES[tr.cls].shape, cx, cy, tr.radius, size)
    return out


def background_image(clip: Clip, size: int = FRAME_SIZE) -> np.ndarray:
    """``[size, size, 3]`` uint8 grey background: ``clip.background`` plus its ramp."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    level = np.round(clip.background + clip.ramp[0] * x + clip.ramp[1] * y)
    return np.repeat(np.clip(level, 0, 255)[..., None], 3, axis=-1).astype(np.uint8)


def render_frames(clip: Clip, size: int = FRAME_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(frames [T, size, size, 3] uint8, sounding-object masks [T, size, size] bool)``."""
    masks = track_masks(clip, size)
    frames = np.repeat(background_image(clip, size)[None], clip.num_frames, axis=0)
    for j, tr in enumerate(clip.tracks):
        frames[masks[:, j]] = CLASSES[tr.cls].colour
    return frames, masks[:, clip.sounding]


def render_audio(clip: Clip) -> np.ndarray:
    """``[num_samples]`` float32 in [-1, 1]: the sounding tone over ``tone_span`` plus faint noise."""
    noise = np.random.default_rng(clip.noise_seed).normal(0.0, NOISE_STD, clip.num_samples)
    a, b = clip.tone_span
    t = np.arange(b - a) / SAMPLE_RATE
    tone = (clip.amplitude_pct / 100.0) * np.sin(2 * np.pi * clip.sounding_class.tone_hz * t)
    fade = min(FADE_SAMPLES, (b - a) // 2)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
    tone[:fade] *= ramp
    tone[len(tone) - fade:] *= ramp[::-1]
    noise[a:b] += tone
    return np.clip(noise, -1.0, 1.0).astype(np.float32)


def mask_box(mask: np.ndarray, scale: int = BOX_SCALE) -> tuple[list[int], list[int]]:
    """Inclusive box of a ``[H, W]`` mask in ``scale``-px coordinates: ``([x1, y1], [x2, y2])``.

    Pixel ``c`` of an ``H``-px frame spans ``[c * s, (c + 1) * s - 1]`` at scale ``s = scale / H``.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("mask_box: the mask is empty (no object pixels)")
    sy, sx = scale / mask.shape[0], scale / mask.shape[1]
    x1, y1 = int(cols.min() * sx), int(rows.min() * sy)
    x2, y2 = int(math.ceil((cols.max() + 1) * sx)) - 1, int(math.ceil((rows.max() + 1) * sy)) - 1
    return [x1, y1], [x2, y2]



def mask_points(mask: np.ndarray, n: int = 3, scale: int = BOX_SCALE) -> list[list[int]]:
    """``n`` pixel points ``[x, y]`` inside a ``[H, W]`` mask, in ``scale``-px coordinates.

    The object pixels at the quantiles ``k / (n + 1)`` of raster order (top to bottom), each
    at its pixel's centre: pixel ``c`` covers ``[c * s, (c + 1) * s)`` at ``s = scale / H``, so
    the point stays on the object when the mask is resized to ``scale`` (nearest neighbour).
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("mask_points: the mask is empty (no object pixels)")
    sy, sx = scale / mask.shape[0], scale / mask.shape[1]
    picks = [rows.size * (k + 1) // (n + 1) for k in range(n)]
    return [[int((cols[i] + 0.5) * sx), int((rows[i] + 0.5) * sy)] for i in picks]
