"""Host side of the thinker's static batch: processor outputs -> fixed-shape arrays.

The original hands the model variable-size media (all patches of the batch concatenated,
every clip's mel frames) and lets ``masked_scatter`` fill the placeholder tokens in order.
Here each sample's media are cut into fixed slots on the host, so the jitted model only
gathers:

* vision: one slot per temporal slice (``[h*w, patch_dim]`` patch rows of a frame pair, in
  the processor's order) — images take one slice, a video of temporal grid ``t`` takes ``t``;
  the sample's images come first, then its videos;
* audio: the clip's valid mel frames in chunks of ``2 * n_window`` frames
  (:func:`crab_jax.models.qwen_audio.pack_audio`), and the pairs of conv outputs each LLM
  token averages;
* ``media_index [b, S]``: for every image / video / audio placeholder, its row in
  ``concat(visual rows, audio rows)`` (-1 for text), in the order the original fills them;
* ``position_ids [b, 3, S]``: :func:`crab_jax.models.mrope.rope_index` (its ``[3, b, S]`` made
  batch-major, as every batch array is: micro-batches and the data sharding split axis 0);
  ``rope_deltas [b, 1]``:
  what a generated token at cache slot ``j`` adds to ``j`` for its position (the original's
  ``rope_deltas``: max position + 1 - valid length - pads).

Slot counts are arguments (a bucket's static sizes); ``None`` takes what this batch needs.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.models.mrope import rope_index
from crab_jax.models.qwen_audio import audio_token_count, pack_audio


class LayoutError(ValueError):
    """The processor outputs do not fit the thinker's layout (names what and where)."""


def _items_per_sample(ids: np.ndarray, mask: np.ndarray, token: int, sizes: list[int], kind: str) -> list[list[int]]:
    """Which media items (indices into ``sizes``, the tokens of each) each sample holds, in order."""
    out, item = [], 0
    for i in range(ids.shape[0]):
        need, mine = int(((ids[i] == token) & mask[i]).sum()), []
        while need > 0:
            if item >= len(sizes):
                raise LayoutError(f"sample {i}: {need} more {kind} tokens than the batch's {kind} inputs provide")
            mine.append(item)
            need -= sizes[item]
            item += 1
        if need < 0:
            raise LayoutError(f"sample {i}: its {kind} tokens end inside {kind} input {item - 1}")
        out.append(mine)
    if item != len(sizes):
        raise LayoutError(f"{len(sizes) - item} {kind} inputs have no placeholder tokens")
    return out


def _slices(pixel_values, grid_thw, cfg: CrabPlusConfig, kind: str) -> list[np.ndarray]:
    """Per item, its temporal slices ``[t, h*w, patch_dim]``."""
    if grid_thw is None:
        return []
    grids = np.asarray(grid_thw).reshape(-1, 3)
    rows = np.asarray(pixel_values, np.float32)
    out, start = [], 0
    for n, (t, h, w) in enumerate(grids):
        if (int(h), int(w)) != cfg.slice_grid:
            raise LayoutError(f"{kind} {n}: patch grid {int(h)}x{int(w)}, expected {cfg.slice_grid} "
                              f"(frames resized to {cfg.frame_size}x{cfg.frame_size})")
        count = int(t * h * w)
        if start + count > rows.shape[0]:
            raise LayoutError(f"{kind} {n}: grid {int(t)}x{int(h)}x{int(w)} needs patch rows {start}..{start + count}, "
                              f"but the {kind} pixel values have {rows.shape[0]} rows")
        out.append(rows[start:start + count].reshape(int(t), int(h * w), rows.shape[-1]))
        start += count
    if start != rows.shape[0]:
        raise LayoutError(f"{kind}: {rows.shape[0]} patch rows but the grids account for {start}")
    return out


def thinker_batch(inputs: Mapping[str, np.ndarray], cfg: CrabPlusConfig, *, visual_slots: int | None = None,
                  audio_chunk_slots: int | None = None, audio_token_slots: int | None = None) -> dict[str, np.ndarray]:
    """The model's batch from the original processor's (collated) outputs.

    Args:
      inputs: ``input_ids, attention_mask [b, S]`` (+ ``labels``), and as present
        ``pixel_values [P, patch_dim]`` + ``image_grid_thw [n, 3]``, ``pixel_values_videos`` +
        ``video_grid_thw`` + ``video_second_per_grid [n]``, ``input_features [n_audio, mel, T]``
        + ``feature_attention_mask [n_audio, T]`` (samples concatenated in batch order).
      visual_slots / audio_chunk_slots / audio_token_slots: per-sample slot counts (None: this
        batch's maximum).
    Returns:
      the keys of :meth:`CrabPlusThinker.__call__` as numpy arrays.
    """
    ids = np.asarray(inputs["input_ids"])
    mask = np.asarray(inputs["attention_mask"]).astype(bool)
    b, seq = ids.shape
    tok = cfg.tokens
    per_slice = cfg.tokens_per_slice
    images = _slices(inputs.get("pixel_values"), inputs.get("image_grid_thw"), cfg, "image")
    videos = _slices(inputs.get("pixel_values_videos"), inputs.get("video_grid_thw"), cfg, "video")
    img_of = _items_per_sample(ids, mask, tok.image, [len(x) * per_slice for x in images], "image")
    vid_of = _items_per_sample(ids, mask, tok.video, [len(x) * per_slice for x in videos], "video")

    frames = []
    if inputs.get("input_features") is not None:
        feats = np.asarray(inputs["input_features"], np.float32)
        valid = np.asarray(inputs["feature_attention_mask"]).astype(bool)
        frames = [int(v.sum()) for v in valid]
        clips = [feats[n][:, valid[n]] for n in range(len(frames))]
    aud_of = _items_per_sample(ids, mask, tok.audio, [audio_token_count(n) for n in frames], "audio")

    sample_slices = [[s for n in img_of[i] for s in images[n]] + [s for n in vid_of[i] for s in videos[n]]
                     for i in range(b)]
    need_v = max((len(s) for s in sample_slices), default=0)
    v_slots = need_v if visual_slots is None else visual_slots
    if need_v > v_slots:
        raise LayoutError(f"a sample has {need_v} temporal slices of frames; the bucket has {v_slots} visual slots")
    window = 2 * cfg.audio.n_window
    need_c = max((sum(-(-frames[n] // window) for n in aud_of[i]) for i in range(b)), default=0)
    need_t = max((sum(audio_token_count(frames[n]) for n in aud_of[i]) for i in range(b)), default=0)
    c_slots = need_c if audio_chunk_slots is None else audio_chunk_slots
    t_slots = need_t if audio_token_slots is None else audio_token_slots

    pixel = np.zeros((b, v_slots, cfg.patches_per_slice, cfg.patch_dim), np.float32)
    media_index = np.full((b, seq), -1, np.int32)
    audio = {"audio_chunks": np.zeros((b, c_slots, window, cfg.audio.num_mel_bins), np.float32),
             "audio_chunk_frames": np.zeros((b, c_slots), np.int32),
             "audio_pool_index": np.zeros((b, t_slots, 2), np.int32)}
    for i in range(b):
        if sample_slices[i]:
            pixel[i, :len(sample_slices[i])] = np.stack(sample_slices[i])
        image_rows = sum(len(images[n]) for n in img_of[i]) * per_slice
        for token, first_row in ((tok.image, 0), (tok.video, image_rows)):
            where = np.flatnonzero((ids[i] == token) & mask[i])
            media_index[i, where] = first_row + np.arange(len(where))
        if aud_of[i]:
            packed = pack_audio([(clips[n], frames[n]) for n in aud_of[i]], cfg.audio.n_window, c_slots, t_slots)
            for key, name in (("chunks", "audio_chunks"), ("chunk_frames", "audio_chunk_frames"),
                              ("pool_index", "audio_pool_index")):
                audio[name][i] = packed[key]
        where = np.flatnonzero((ids[i] == tok.audio) & mask[i])
        media_index[i, where] = v_slots * per_slice + np.arange(len(where))

    steps = inputs.get("video_second_per_grid")
    positions, deltas = rope_index(ids, mask, cfg.rope_tokens, image_grid_thw=inputs.get("image_grid_thw"),
                              video_grid_thw=inputs.get("video_grid_thw"), video_second_per_grid=steps,
                              audio_mel_frames=frames or None)
    out = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
           "position_ids": positions.swapaxes(0, 1).astype(np.int32),
           # The original's decode-step offset: slot + rope_deltas is a new token's position.
           "rope_deltas": (deltas - (~mask).sum(-1, keepdims=True)).astype(np.int32), "media_index": media_index, "pixel_slices": pixel, **audio}
    if "labels" in inputs:
        out["labels"] = np.asarray(inputs["labels"]).astype(np.int32)
    return out
