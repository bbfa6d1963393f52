"""Packed rows: several Crab examples in one row of a static-shape batch (``data.packing``).

A row of ``S`` tokens holds its samples one after another, right-padded::

    input_ids / labels / media_index   sample 1 | sample 2 | ... | pad      [S]
    segment_ids                        1 1 1 1  | 2 2 2    | ... | 0 0      [S]
    position_ids                       0 1 2 3  | 0 1 2    | ... | 0 0      [S]  (restart per sample)
    frames        [T_row, 3, H, W]     sample 1's frames, then sample 2's, ...   (zero after)
    fbank         [A_row, F, mel]      sample 1's audio segments, then sample 2's, ...

Each sample's placeholders expand into *its* part of the row's media buffer (visual rows of
frame slot ``f`` at ``f * Qv``, audio rows of segment slot ``a`` at ``T_row * Qv + a * Qa``),
so the model (:meth:`crab_jax.families.crab.model.Crab.__call__`) encodes the row's real
media once and gathers as for an unpacked row; CLIP, the Q-Formers and BEATs work frame by
frame and segment by segment, so every sample's media rows equal its unpacked ones. Attention
stays within a sample (``segment_ids``), a sample's first label is ignored (nothing before it
in the row predicts it), and a row has no mask to train (packable samples have none).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.data.text.sequence import expand_placeholders
from crab_jax.families.crab.collate import CollateConfig, media_blocks, place_media
from crab_jax.families.crab.examples import MEL_BINS, Example, ExampleSettings
from crab_jax.models.losses import IGNORE_INDEX


def collate_packed(rows: Sequence[Sequence[Example]], bucket: Bucket, settings: ExampleSettings,
                   cc: CollateConfig) -> dict[str, np.ndarray]:
    """Rows of examples (each row within ``bucket``'s tokens, samples, frame and audio slots)
    -> one packed batch in the :mod:`crab_jax.families.crab.batch_spec` format."""
    b, s, h = len(rows), bucket.seq_len, settings.image_size
    t_row, a_row, p = bucket.frame_slots, bucket.audio_slots, bucket.segments
    out = {"input_ids": np.full((b, s), cc.pad_token_id, np.int32),
           "labels": np.full((b, s), IGNORE_INDEX, np.int32),
           "media_index": np.full((b, s), -1, np.int32),
           "segment_ids": np.zeros((b, s), np.int32),
           "position_ids": np.zeros((b, s), np.int32),
           "segment_task_id": np.full((b, p), -1, np.int32)}
    frames = np.zeros((b, t_row, 3, h, h), np.float32)
    fbank = np.zeros((b, a_row, bucket.fbank_frames, MEL_BINS), np.float32)
    fbank_valid = np.zeros((b, a_row), np.int32)
    audio_offset = t_row * settings.visual_queries
    for i, row in enumerate(rows):
        if len(row) > p:
            raise ValueError(f"a packed row of {len(row)} samples, more than data.packing.samples={p}")
        token, frame, segment = 0, 0, 0
        for k, ex in enumerate(row):
            n_frames, n_audio = ex.frames.shape[0], ex.fbank.shape[0]
            if frame + n_frames > t_row or segment + n_audio > a_row:
                raise ValueError(f"{ex.source}: {n_frames} frames / {n_audio} audio segments do not fit the packed "
                                 f"row's {t_row - frame} / {a_row - segment} free slots")
            sample = expand_placeholders(ex.input_ids, ex.labels, media_blocks(
                ex, settings, frame * settings.visual_queries, audio_offset + segment * settings.audio_queries))
            n = len(sample.input_ids)
            if token + n > s:
                raise ValueError(f"{ex.source}: {n} tokens do not fit the packed row's {s - token} free slots")
            span = slice(token, token + n)
            out["input_ids"][i, span] = sample.input_ids
            out["labels"][i, span] = sample.labels
            out["labels"][i, token] = IGNORE_INDEX  # the row's previous sample does not predict it
            out["media_index"][i, span] = sample.media_index
            out["segment_ids"][i, span] = k + 1
            out["position_ids"][i, span] = np.arange(n)
            out["segment_task_id"][i, k] = ex.task_id
            place_media(ex, i, frames, fbank, fbank_valid, frame_slot=frame, audio_slot=segment)
            token, frame, segment = token + n, frame + n_frames, segment + n_audio
    out["attention_mask"] = (out["segment_ids"] > 0).astype(np.int32)
    out.update(frames=frames, fbank=fbank, fbank_valid=fbank_valid,
               mask_positions=np.zeros((b, len(settings.mask_token_ids)), np.int32),
               gt_mask=np.zeros((b, 1, h, h), np.float32), is_seg=np.zeros(b, bool), is_avss=np.zeros(b, bool),
               seg_frame=np.zeros(b, np.int32), task_id=np.maximum(out["segment_task_id"][:, 0], 0))
    return out
