"""Crab+'s images and videos -> the Qwen2.5-Omni processor's pixel rows (host-side NumPy).

What the original does (spec B.2, fixture README section 4), step by step:

* Video (``qwen_omni_utils`` ``fetch_video`` with ``nframes`` and ``resized_height/width``):
  decord reads the clip at its own size; ``nframes`` is rounded to a multiple of 2
  (:func:`round_nframes`); frames ``round(linspace(0, n - 1, nframes))`` over the whole clip
  (:func:`frame_indices`); every frame resized to ``size x size`` (aspect ratio not kept)
  with torchvision bicubic + antialias on uint8, so the frames stay integers 0..255
  (:func:`crab_jax.data.media.resize.resize_uint8_like_torchvision`). Here PyAV decodes the
  frames at the file's size as rgb24; on the fixture clip that gives decord's frames (the
  resized frames equal the original's bit for bit).
* Fallbacks: a decode failure, or fewer frames in the file than ``nframes``, retries with 2
  frames; if that fails too the original *silently* substitutes a zero video
  ``[10, 3, 224, 224]`` (10 frames whatever ``nframes`` was). Here the same frames come
  back, but :attr:`VideoFrames.fallback` says which path was taken (``"none"``,
  ``"two_frames"``, ``"zeros"``) and :attr:`VideoFrames.errors` why, so a caller can count
  and report them.
* Image (``fetch_image``): PIL RGB, ``resize((size, size))`` (PIL's default bicubic).
* Pixel rows (``Qwen2VLImageProcessor``): ``x * (1/255)`` in float64 cast to float32, then
  ``(x - mean) / std`` in float32 (CLIP mean/std); frames padded to a multiple of the
  temporal patch by repeating the last one (an image becomes 2 frames); rows ordered
  ``(t, h / (p*m), w / (p*m), m, m)`` with columns ``(C, temporal patch, p, p)``
  (:func:`patch_rows`); grid ``(T / 2, size / p, size / p)``.
* a2v: the two 10-frame videos are concatenated in time into one 20-frame video before
  the processor (:func:`concat_videos`).
* The processor's batch (:func:`vision_inputs`): every item's rows concatenated in batch
  order, ``*_grid_thw [n, 3]`` int64, ``video_second_per_grid = temporal_patch / fps`` with
  fps never passed (1.0): 2.0 s. These are the keys
  :func:`crab_jax.families.crab_plus.layout.thinker_batch` reads.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media.decode import (CLIP_MEAN, CLIP_STD, check_file, count_frames, frames_through, load_image,
                                        open_video)
from crab_jax.data.media.resize import resize_uint8_like_torchvision

FRAME_SIZE = 224  # Crab+'s resized_height = resized_width
FRAME_FACTOR = 2  # qwen_omni_utils: nframes is a multiple of 2
RETRY_FRAMES = 2  # the original's second attempt
ZERO_VIDEO_FRAMES = 10  # the original's last resort: torch.zeros(10, 3, 224, 224)
DEFAULT_FPS = 1.0  # the processor's fps when none is passed (Crab+ never passes one)
FALLBACKS = ("none", "two_frames", "zeros")


@dataclasses.dataclass(frozen=True)
class PatchSpec:
    """The image processor's patching (``preprocessor_config.json``: ``patch_size``,
    ``temporal_patch_size``, ``merge_size``, ``image_mean``, ``image_std``)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @classmethod
    def from_preprocessor_config(cls, config: dict) -> "PatchSpec":
        return cls(patch_size=int(config["patch_size"]), temporal_patch_size=int(config["temporal_patch_size"]),
                   merge_size=int(config["merge_size"]), mean=tuple(config["image_mean"]),
                   std=tuple(config["image_std"]))

    @property
    def row_dim(self) -> int:
        """Columns of a pixel row: ``C * temporal_patch * patch * patch`` (1176)."""
        return len(self.mean) * self.temporal_patch_size * self.patch_size ** 2


@dataclasses.dataclass(frozen=True)
class VideoFrames:
    """A decoded, resized video and how it was obtained.

    Attributes:
      frames: ``[T, 3, size, size]`` uint8 RGB (torchvision's TCHW).
      indices: ``[T]`` int64 frame indices read (empty for the zero video).
      frames_in_file: frames the file's index lists (0 when it could not be opened).
      fallback: ``"none"`` (``nframes`` frames read), ``"two_frames"`` (the retry) or
        ``"zeros"`` (nothing readable: the original's zero video).
      errors: why each failed attempt failed (empty for ``"none"``).
    """

    frames: np.ndarray
    indices: np.ndarray
    frames_in_file: int
    fallback: str
    errors: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PatchRows:
    """One image or video as the processor gives it: ``rows [t*h*w, row_dim]`` float32 and
    ``grid_thw [3]`` int64 (``t`` temporal slices of ``h x w`` patches)."""

    rows: np.ndarray
    grid_thw: np.ndarray


def round_nframes(nframes: int) -> int:
    """``round_by_factor(nframes, 2)``: Python's ``round`` (half to even), so 5 -> 4, 7 -> 8."""
    return round(nframes / FRAME_FACTOR) * FRAME_FACTOR


def frame_indices(frames_in_file: int, nframes: int) -> np.ndarray:
    """``torch.linspace(0, n - 1, nframes).round().long()``: float32 linspace (from both
    ends, as ATen's kernel: ``start + i*step`` for the first half, ``end - (steps-1-i)*step``
    after), rounded half to even. Returns ``[nframes]`` int64."""
    if nframes == 1:
        return np.zeros(1, np.int64)
    start, end = np.float32(0), np.float32(frames_in_file - 1)
    step = np.float32((end - start) / np.float32(nframes - 1))
    i = np.arange(nframes)
    values = np.where(i < nframes // 2, start + step * i.astype(np.float32),
                      end - step * (nframes - 1 - i).astype(np.float32)).astype(np.float32)
    return np.round(values).astype(np.int64)


def _read_frames(path: str, nframes: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One decord-like attempt: ``(frames [n, 3, size, size] uint8, indices [n], frames_in_file)``.

    Raises BadRecordError where the original's reader raises (file missing / undecodable,
    fewer frames than wanted — its ``smart_nframes`` check —, truncated stream)."""
    path = check_file(path, "video")
    nframes = round_nframes(nframes)
    with open_video(path) as (container, stream):
        total = count_frames(container, stream)
        if not FRAME_FACTOR <= nframes <= total:
            raise BadRecordError(path, f"nframes should be in [{FRAME_FACTOR}, {total}], got {nframes}")
        indices = frame_indices(total, nframes)
        wanted: dict[int, list[int]] = {}
        for k, i in enumerate(indices.tolist()):
            wanted.setdefault(i, []).append(k)
        frames: list[np.ndarray | None] = [None] * nframes
        for i, frame in frames_through(container, stream, path, int(indices[-1])):
            if i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                for k in wanted[i]:
                    frames[k] = rgb
    video = np.stack(frames).transpose(0, 3, 1, 2)  # TCHW, as the original's tensor
    return resize_uint8_like_torchvision(video, (size, size)), indices, total


def read_video(path: str | os.PathLike, nframes: int, size: int = FRAME_SIZE) -> VideoFrames:
    """The original's ``fetch_video`` for one clip, its fallbacks made visible (module doc)."""
    path, errors, total = os.fspath(path), [], 0
    for fallback, n in (("none", nframes), ("two_frames", RETRY_FRAMES)):
        try:
            frames, indices, total = _read_frames(path, n, size)
            return VideoFrames(frames, indices, total, fallback, tuple(errors))
        except BadRecordError as e:
            errors.append(str(e))
    return VideoFrames(np.zeros((ZERO_VIDEO_FRAMES, 3, size, size), np.uint8), np.zeros(0, np.int64), total,
                       "zeros", tuple(errors))


def read_image(path: str | os.PathLike, size: int = FRAME_SIZE) -> np.ndarray:
    """``fetch_image``: PIL RGB ``resize((size, size))`` (bicubic). Returns ``[1, 3, size, size]`` uint8."""
    return load_image(path, size).transpose(2, 0, 1)[None]


def concat_videos(videos: Sequence[np.ndarray]) -> np.ndarray:
    """a2v: ``torch.cat(videos, dim=0)``: ``[sum T, 3, H, W]``."""
    return np.concatenate(list(videos), axis=0)


def patch_rows(frames: np.ndarray, spec: PatchSpec = PatchSpec()) -> PatchRows:
    """``Qwen2VLImageProcessor`` on frames already at their final size.

    Args:
      frames: ``[T, C, H, W]`` with values 0..255 (uint8 or integer-valued floats); ``H`` and
        ``W`` multiples of ``patch_size * merge_size``.
    Returns:
      rows ``[T'/tp * H/p * W/p, C * tp * p * p]`` float32 (``T'`` = T padded to a multiple
      of ``tp`` by repeating the last frame) and ``grid_thw = (T'/tp, H/p, W/p)``.
    """
    frames = np.asarray(frames)
    t, c, h, w = frames.shape
    p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frames {h}x{w} are not multiples of patch_size x merge_size = {p * m}")
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    x = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)  # HF rescale: float64, then float32
    x = (x - mean) / std  # HF normalize: float32
    if t % tp:
        x = np.concatenate([x, np.repeat(x[-1:], tp - t % tp, axis=0)])
    gt, gh, gw = x.shape[0] // tp, h // p, w // p
    x = x.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return PatchRows(np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)),
                     np.array([gt, gh, gw], np.int64))


def vision_inputs(images: Sequence[PatchRows] = (), videos: Sequence[PatchRows] = (),
                  spec: PatchSpec = PatchSpec(), fps: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The processor's (collated) vision outputs for a batch, items in batch order.

    Returns (each pair only when there are such items):
      ``pixel_values [P_img, row_dim]`` float32 + ``image_grid_thw [n_img, 3]`` int64;
      ``pixel_values_videos [P_vid, row_dim]`` + ``video_grid_thw [n_vid, 3]`` +
      ``video_second_per_grid [n_vid]`` float32 (``temporal_patch / fps``; fps 1.0 when not
      given, as the original). Feed with ``input_ids`` etc. to ``layout.thinker_batch``.
    """
    out: dict[str, np.ndarray] = {}
    if images:
        out["pixel_values"] = np.concatenate([i.rows for i in images]).astype(np.float32)
        out["image_grid_thw"] = np.stack([i.grid_thw for i in images]).astype(np.int64)
    if videos:
        fps = [DEFAULT_FPS] * len(videos) if fps is None else list(fps)
        if len(fps) != len(videos):
            raise ValueError(f"{len(videos)} videos but {len(fps)} fps values")
        out["pixel_values_videos"] = np.concatenate([v.rows for v in videos]).astype(np.float32)
        out["video_grid_thw"] = np.stack([v.grid_thw for v in videos]).astype(np.int64)
        out["video_second_per_grid"] = np.array([spec.temporal_patch_size / f for f in fps], np.float32)
    return out
