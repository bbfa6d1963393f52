"""Multimodal rotary position ids (Qwen2.5-Omni's ``get_rope_index``), computed on the host.

The LLM rotates each channel by one of three position streams (temporal, height, width;
``models.llama.mrope_streams``). Text, bos / eos tokens and audio take the same integer on
all three streams; an image / video block of merged grid ``(T, H', W')`` takes ``t = start +
floor(k * step * position_id_per_seconds)`` for temporal index ``k`` (step 1 for an image,
the video's seconds per grid otherwise), ``h = start + row``, ``w = start + col`` in
row-major order per temporal slice. After any block the next position is the block's
maximum over all streams + 1. Pads (``attention_mask == 0``) get 1 on every stream.

Numpy only: the result is a batch input, so the jitted model sees fixed shapes whatever
the media. The rules are the original's (``use_audio_in_video=False``, as Crab+ calls it).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crab_jax.models.qwen_audio import audio_token_count


@dataclasses.dataclass(frozen=True)
class RopeTokens:
    """The token ids and constants ``get_rope_index`` reads (thinker config)."""

    image_token_id: int
    video_token_id: int
    audio_token_id: int
    vision_start_token_id: int
    audio_start_token_id: int
    spatial_merge_size: int = 2
    position_id_per_seconds: int = 25


def _vision_block(start: int, grid_thw: Sequence[int], step: float, cfg: RopeTokens) -> np.ndarray:
    """``[3, T*H'*W']`` positions of one image / video block starting at ``start``."""
    t, h, w = (int(v) for v in grid_thw)
    gh, gw = h // cfg.spatial_merge_size, w // cfg.spatial_merge_size
    # float32 product then truncation, as torch computes ``(arange * step * 25).long()``.
    t_index = (np.arange(t, dtype=np.float32) * np.float32(step) * np.float32(cfg.position_id_per_seconds))
    t_index = t_index.astype(np.int64)
    tt = np.repeat(t_index, gh * gw)
    hh = np.tile(np.repeat(np.arange(gh), gw), t)
    ww = np.tile(np.arange(gw), t * gh)
    return np.stack([tt, hh, ww]) + start


def row_positions(tokens: np.ndarray, cfg: RopeTokens, image_grids: list, video_grids: list,
                  video_steps: list, audio_frames: list) -> np.ndarray:
    """``[3, n]`` positions of one unpadded row; the grid / frame lists are consumed in order.

    Args:
      tokens: ``[n]`` ids of the row's valid tokens.
      image_grids / video_grids: ``(t, h, w)`` patch grids of this row's images / videos, in
        order; video_steps: seconds per temporal grid of each video; audio_frames: valid mel
        frames of each audio clip. Each list is popped from the front as blocks are met.
    """
    tokens = [int(t) for t in tokens]
    out: list[np.ndarray] = []

    def next_start() -> int:
        return int(out[-1].max()) + 1 if out else 0

    def text(length: int) -> None:
        if length > 0:
            out.append(np.broadcast_to(np.arange(length) + next_start(), (3, length)))

    starts = [i for i, t in enumerate(tokens) if t == cfg.vision_start_token_id]
    after_start = [tokens[i + 1] for i in starts if i + 1 < len(tokens)]
    remain = {"image": after_start.count(cfg.image_token_id), "video": after_start.count(cfg.video_token_id),
              "audio": tokens.count(cfg.audio_start_token_id)}
    ids = {"image": cfg.image_token_id, "video": cfg.video_token_id, "audio": cfg.audio_token_id}
    st = 0
    for _ in range(sum(remain.values())):
        ends = {}
        for kind, tok in ids.items():
            if remain[kind] > 0 and tok in tokens[st:]:
                ends[kind] = tokens.index(tok, st)
        if not ends:
            break
        kind = min(ends, key=lambda k: (ends[k], ("audio", "image", "video").index(k)))
        text_len = ends[kind] - st - 1  # the bos token before the block is not text
        text(text_len)
        text(1)  # bos
        if kind == "audio":
            n = audio_token_count(int(audio_frames.pop(0)))
            out.append(np.broadcast_to(np.arange(n) + next_start(), (3, n)))
        else:
            grid = (image_grids if kind == "image" else video_grids).pop(0)
            step = 1.0 if kind == "image" else float(video_steps.pop(0))
            block = _vision_block(next_start(), grid, step, cfg)
            n = block.shape[1]
            out.append(block)
        text(1)  # eos
        st += text_len + 1 + n + 1
        remain[kind] -= 1
    text(len(tokens) - st)
    return np.concatenate(out, axis=1) if out else np.zeros((3, 0), np.int64)


def rope_index(input_ids: np.ndarray, attention_mask: np.ndarray, cfg: RopeTokens, *,
               image_grid_thw=None, video_grid_thw=None, video_second_per_grid=None,
               audio_mel_frames=None) -> tuple[np.ndarray, np.ndarray]:
    """``get_rope_index`` of a batch: position ids ``[3, b, S]`` int64 and deltas ``[b, 1]``.

    Args:
      input_ids, attention_mask: ``[b, S]`` (any padding side; only valid tokens count).
      image_grid_thw / video_grid_thw: ``[n, 3]`` patch grids of the batch's images / videos in
        batch order (samples concatenated, as the processor returns them); video_second_per_grid
        ``[n_videos]``; audio_mel_frames ``[n_audio]`` valid mel frames per clip.
    Returns:
      positions (pads 1 on every stream) and ``max position + 1 - valid length`` per row (the
      original's ``rope_deltas`` before it subtracts the pad count).
    """
    input_ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(bool)
    b, s = input_ids.shape
    images = [tuple(g) for g in np.asarray(image_grid_thw).reshape(-1, 3)] if image_grid_thw is not None else []
    videos = [tuple(g) for g in np.asarray(video_grid_thw).reshape(-1, 3)] if video_grid_thw is not None else []
    if not images and not videos:
        # The original's text / audio-only rule: cumulative count, pads 1.
        pos = np.where(mask, np.cumsum(mask, axis=-1) - 1, 1).astype(np.int64)
        deltas = pos.max(axis=-1, keepdims=True) + 1 - mask.sum(-1, keepdims=True)
        return np.broadcast_to(pos, (3, b, s)).copy(), deltas.astype(np.int64)
    steps = list(np.asarray(video_second_per_grid, np.float32).reshape(-1)) if videos else []
    audio = list(np.asarray(audio_mel_frames).reshape(-1)) if audio_mel_frames is not None else []
    positions = np.ones((3, b, s), np.int64)
    deltas = np.zeros((b, 1), np.int64)
    for i in range(b):
        row = row_positions(input_ids[i][mask[i]], cfg, images, videos, steps, audio)
        positions[:, i, mask[i]] = row
        deltas[i, 0] = (int(row.max()) + 1 if row.size else 0) - int(mask[i].sum())
    return positions, deltas
