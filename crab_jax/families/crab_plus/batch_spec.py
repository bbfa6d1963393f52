"""Crab+'s batch contract (static shapes) and the ``random`` source of it.

A batch is what :meth:`CrabPlusThinker.__call__` reads (:mod:`crab_jax.families.crab_plus.layout`
builds it from processor outputs)::

    input_ids, attention_mask, labels, media_index   [b, S]           int32
    position_ids                                     [b, 3, S]        int32  (M-RoPE streams)
    rope_deltas                                      [b, 1]           int32  (generation only)
    pixel_slices                                     [b, V, h*w, K]   float32 (V temporal slices)
    audio_chunks                                     [b, C, 2W, mel]  float32 (W = n_window)
    audio_chunk_frames                               [b, C]           int32
    audio_pool_index                                 [b, Ta, 2]       int32
    task_id                                          [b]              int32

The random batches are well-formed Crab+ samples — a chat-like prompt with an image or a
video and an audio clip, an answer ending with ``<|im_end|>``, labels on the answer only,
right padding as the original collates — built through the same layout code as real data.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crab_jax.config.sections import DataConfig
from crab_jax.data.batch_shapes import check_shapes
from crab_jax.data.random_batches import RandomBatches
from crab_jax.families.crab_plus.layout import thinker_batch
from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.models.losses import IGNORE_INDEX
from crab_jax.models.qwen_audio import audio_token_count

DEFAULT_TASKS = ("ave", "avqa", "s4")
# Default media slots of the random source when the config says 0: 10 frames (5 temporal
# slices, Crab+'s video tasks) and 10 s of audio.
DEFAULT_FRAMES = 10
DEFAULT_AUDIO_SECONDS = 10
MEL_FRAMES_PER_SECOND = 100


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """Static shapes of one batch: ``batch`` rows of ``seq_len`` tokens, ``visual_slots`` temporal
    slices, ``audio_chunk_slots`` chunks and ``audio_token_slots`` audio tokens per row."""

    batch: int
    seq_len: int
    visual_slots: int
    audio_chunk_slots: int
    audio_token_slots: int

    def shapes(self, cfg: CrabPlusConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        b, s = self.batch, self.seq_len
        i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
        window = 2 * cfg.audio.n_window
        return dict(
            {k: ((b, s), i32) for k in ("input_ids", "attention_mask", "labels", "media_index")},
            position_ids=((b, 3, s), i32), rope_deltas=((b, 1), i32),
            pixel_slices=((b, self.visual_slots, cfg.patches_per_slice, cfg.patch_dim), f32),
            audio_chunks=((b, self.audio_chunk_slots, window, cfg.audio.num_mel_bins), f32),
            audio_chunk_frames=((b, self.audio_chunk_slots), i32),
            audio_pool_index=((b, self.audio_token_slots, 2), i32),
            task_id=((b,), i32))


def audio_slots_for_frames(cfg: CrabPlusConfig, mel_frames: int) -> tuple[int, int]:
    """``(chunk slots, token slots)`` holding a clip of ``mel_frames`` valid frames (at least one
    chunk, so a batch without audio still has a well-formed buffer)."""
    frames = max(int(mel_frames), 1)
    return -(-frames // (2 * cfg.audio.n_window)), audio_token_count(frames)


def audio_slots_for(cfg: CrabPlusConfig, seconds: float) -> tuple[int, int]:
    """``(chunk slots, token slots)`` holding ``seconds`` of audio."""
    return audio_slots_for_frames(cfg, int(round(seconds * MEL_FRAMES_PER_SECOND)))


def spec_for(data: DataConfig, cfg: CrabPlusConfig, batch: int) -> BatchSpec:
    """The random source's shape: ``data.frame_slots`` frames (0: 10) -> temporal slices,
    ``data.audio_slots`` seconds of audio (0: 10)."""
    frames = int(data.frame_slots) or DEFAULT_FRAMES
    slices = -(-frames // cfg.vision.temporal_patch_size)
    chunks, tokens = audio_slots_for(cfg, int(data.audio_slots) or DEFAULT_AUDIO_SECONDS)
    return BatchSpec(batch=batch, seq_len=int(data.seq_len), visual_slots=slices, audio_chunk_slots=chunks,
                     audio_token_slots=tokens)


def check_batch(batch: dict, spec: BatchSpec, cfg: CrabPlusConfig, source: str = "batch") -> None:
    """Raises naming the first key whose shape differs from ``spec`` (or that is missing)."""
    check_shapes(batch, spec.shapes(cfg), spec, source)


def _random_row(rng: np.random.Generator, cfg: CrabPlusConfig, spec: BatchSpec, base_vocab: int):
    """One sample: (ids, labels, image or None, video or None, mel frames)."""
    tok = cfg.tokens
    image = bool(rng.integers(0, 2)) or spec.visual_slots < 2
    slices = 1 if image else int(rng.integers(1, spec.visual_slots + 1))
    max_frames = min(spec.audio_chunk_slots * 2 * cfg.audio.n_window, _frames_for_tokens(spec.audio_token_slots))
    frames = int(rng.integers(min(3, max_frames), max_frames + 1))
    visual = [tok.vision_start] + [tok.image if image else tok.video] * (slices * cfg.tokens_per_slice) + [tok.vision_end]
    audio = [tok.audio_start] + [tok.audio] * audio_token_count(frames) + [tok.audio_end]
    room = spec.seq_len - len(visual) - len(audio) - 2
    if room < 4:
        raise ValueError(f"BatchSpec.seq_len {spec.seq_len} is too short for {slices} visual slice(s) x "
                         f"{cfg.tokens_per_slice} + {len(audio) - 2} audio tokens plus text")
    prompt_len = int(rng.integers(1, room // 2 + 1))
    answer_len = int(rng.integers(1, room - prompt_len))
    text = lambda n: [int(t) for t in rng.integers(0, base_vocab, size=n)]
    prompt = text(prompt_len) + visual + audio
    answer = text(answer_len) + [tok.eos]
    labels = [IGNORE_INDEX] * len(prompt) + answer
    return prompt + answer, labels, slices if image else None, None if image else slices, frames


def _frames_for_tokens(tokens: int) -> int:
    """The most mel frames whose clip yields at most ``tokens`` audio tokens."""
    frames = 4 * tokens
    while frames > 1 and audio_token_count(frames) > tokens:
        frames -= 1
    return frames


def random_batch(rng: np.random.Generator, spec: BatchSpec, cfg: CrabPlusConfig,
                 tasks: Sequence[str] = DEFAULT_TASKS) -> dict[str, np.ndarray]:
    """One right-padded batch with random, well-formed content (see the module docstring)."""
    base_vocab = min(cfg.tokens.pad, cfg.text.vocab_size)
    rows = [_random_row(rng, cfg, spec, base_vocab) for _ in range(spec.batch)]
    ids = np.full((spec.batch, spec.seq_len), cfg.tokens.pad, np.int64)
    labels = np.full_like(ids, IGNORE_INDEX)
    mask = np.zeros_like(ids)
    pixels, image_grids, video_grids, clips = [], [], [], []
    side = cfg.slice_grid[0]
    for i, (row, lab, image, video, frames) in enumerate(rows):
        ids[i, :len(row)], labels[i, :len(row)], mask[i, :len(row)] = row, lab, 1
        slices = image or video
        pixels.append(rng.normal(size=(slices * cfg.patches_per_slice, cfg.patch_dim)).astype(np.float32))
        (image_grids if image else video_grids).append((slices, side, side))
        clips.append(frames)
    total = max(clips)
    features = rng.normal(size=(len(clips), cfg.audio.num_mel_bins, total)).astype(np.float32)
    feature_mask = (np.arange(total)[None] < np.asarray(clips)[:, None]).astype(np.int32)
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, input_features=features,
                  feature_attention_mask=feature_mask)
    images = [p for p, (_, _, im, _, _) in zip(pixels, rows) if im]
    videos = [p for p, (_, _, im, _, _) in zip(pixels, rows) if not im]
    if images:
        inputs.update(pixel_values=np.concatenate(images), image_grid_thw=np.asarray(image_grids))
    if videos:
        inputs.update(pixel_values_videos=np.concatenate(videos), video_grid_thw=np.asarray(video_grids),
                      video_second_per_grid=np.full(len(videos), 2.0, np.float32))
    batch = thinker_batch(inputs, cfg, visual_slots=spec.visual_slots, audio_chunk_slots=spec.audio_chunk_slots,
                          audio_token_slots=spec.audio_token_slots)
    batch["task_id"] = rng.integers(0, len(tasks), size=spec.batch).astype(np.int32)
    return batch


def make_random_batches(spec: BatchSpec, cfg: CrabPlusConfig, seed: int, *, num_distinct: int = 0,
                        tasks: Sequence[str] = DEFAULT_TASKS) -> RandomBatches:
    tasks = tuple(tasks)
    return RandomBatches(spec, lambda rng: random_batch(rng, spec, cfg, tasks), seed, num_distinct=num_distinct)
