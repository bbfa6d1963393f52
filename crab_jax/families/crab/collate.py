"""Crab examples -> one static-shape batch in the :mod:`crab_jax.families.crab.batch_spec` format.

Placeholders are expanded into media rows (:func:`media_blocks`: the visual block, then the
audio block, at :func:`crab_jax.families.crab.model.media_layout`'s offsets), frames get
CLIP's normalisation, fbanks are placed in their slots (zero-padded to the bucket's fbank
length; ``fbank_valid`` says how many frames of each segment are real, so the model ignores
the rest), and the rows are left-padded to the bucket's token length. Fillers (:func:`as_filler`) carry every label -100 and ``is_seg``
False, so they add nothing to the LM loss (a mean over labelled tokens) nor to the mask loss.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crab_jax.data.media.decode import clip_preprocess
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.data.text.sequence import MediaBlock, expand_placeholders, left_pad_batch, mask_token_positions
from crab_jax.families.crab.examples import BEATS_PATCH, MEL_BINS, Example, ExampleSettings
from crab_jax.families.crab.model import CrabConfig
from crab_jax.models.losses import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class CollateConfig:
    """Model-side constants of collation (from :class:`CrabConfig`)."""

    pad_token_id: int
    nonseg_mask_positions: tuple[int, ...]
    mask_position_offset: int

    @classmethod
    def from_crab(cls, cfg: CrabConfig) -> "CollateConfig":
        return cls(int(cfg.pad_token_id), tuple(cfg.nonseg_mask_positions), int(cfg.mask_position_offset))


def as_filler(ex: Example) -> Example:
    """A copy that contributes nothing to any loss (labels -100, not a segmentation sample)."""
    return dataclasses.replace(ex, labels=np.full_like(ex.labels, IGNORE_INDEX), is_seg=False, is_avss=False)


def blank_example(settings: ExampleSettings, pad_id: int) -> Example:
    """A one-token, media-free filler for a batch whose every record failed to decode."""
    h = settings.image_size
    return Example(source="<blank>", index=-1, task_id=0, input_ids=np.asarray([pad_id], np.int32),
                   labels=np.asarray([IGNORE_INDEX], np.int32), visual=[], frames=np.zeros((0, h, h, 3), np.uint8),
                   fbank=np.zeros((0, BEATS_PATCH, MEL_BINS), np.float32), gt_mask=np.zeros((1, h, h), np.float32),
                   is_seg=False, is_avss=False)


def media_blocks(ex: Example, settings: ExampleSettings, visual_row: int | None = None,
                 audio_row: int | None = None) -> dict[int, MediaBlock]:
    """Placeholder id -> rows of the media buffer: the visual rows from ``visual_row``, the audio
    rows from ``audio_row`` (default: the layout's offsets; a packed row's samples start later)."""
    qv, qa = settings.visual_queries, settings.audio_queries
    blocks = {}
    row = settings.visual_offset if visual_row is None else visual_row
    for pid, count in ex.visual:
        blocks[pid] = MediaBlock(row, count * qv)
        row += count * qv
    if ex.fbank.shape[0]:
        start = settings.audio_offset if audio_row is None else audio_row
        blocks[int(settings.token_ids["<audio>"])] = MediaBlock(start, ex.fbank.shape[0] * qa)
    return blocks


def place_media(ex: Example, i: int, frames: np.ndarray, fbank: np.ndarray, fbank_valid: np.ndarray, *,
                frame_slot: int = 0, audio_slot: int = 0) -> None:
    """Writes ``ex``'s frames (CLIP-normalised) into ``frames[i]`` from ``frame_slot`` and its fbank
    segments (zero-padded to the bucket's length, real lengths in ``fbank_valid``) into
    ``fbank[i]`` from ``audio_slot``."""
    n_frames, n_audio = ex.frames.shape[0], ex.fbank.shape[0]
    if n_frames:
        frames[i, frame_slot:frame_slot + n_frames] = clip_preprocess(ex.frames, frames.shape[-1])
    if n_audio:
        fbank[i, audio_slot:audio_slot + n_audio, :ex.fbank_frames] = ex.fbank
        fbank_valid[i, audio_slot:audio_slot + n_audio] = ex.fbank_frames


def fits(ex: Example, bucket: Bucket, settings: ExampleSettings) -> str | None:
    """Why ``ex`` does not fit ``bucket`` (None when it fits)."""
    blocks = media_blocks(ex, settings)
    n = len(ex.input_ids) + sum(b.length - 1 for b in blocks.values())
    if n > bucket.seq_len:
        return f"{n} tokens after expansion, more than its planned bucket {bucket.seq_len}"
    if ex.fbank.shape[0] and ex.fbank_frames > bucket.fbank_frames:
        return f"{ex.fbank_frames} fbank frames, more than its planned bucket's {bucket.fbank_frames}"
    return None


def collate(examples: Sequence[Example], bucket: Bucket, settings: ExampleSettings,
            cc: CollateConfig) -> dict[str, np.ndarray]:
    """Examples (all fitting ``bucket``) -> one batch in the :mod:`crab_jax.families.crab.batch_spec` format."""
    b, h = len(examples), settings.image_size
    frames = np.zeros((b, settings.frame_slots, 3, h, h), np.float32)
    fbank = np.zeros((b, settings.audio_slots, bucket.fbank_frames, MEL_BINS), np.float32)
    fbank_valid = np.zeros((b, settings.audio_slots), np.int32)
    gt = np.zeros((b, 1, h, h), np.float32)
    assembled = []
    for i, ex in enumerate(examples):
        assembled.append(expand_placeholders(ex.input_ids, ex.labels, media_blocks(ex, settings)))
        place_media(ex, i, frames, fbank, fbank_valid)
        gt[i] = ex.gt_mask
    batch = left_pad_batch(assembled, bucket.seq_len, cc.pad_token_id)
    pad_left = batch.pop("pad_left")
    n_mask = len(settings.mask_token_ids)
    positions = np.zeros((b, n_mask), np.int32)
    if n_mask:
        for i, (ex, s) in enumerate(zip(examples, assembled)):
            positions[i] = mask_token_positions(
                ex.input_ids, settings.mask_token_ids, expansion_shift=s.expansion_shift, pad_left=int(pad_left[i]),
                is_seg=ex.is_seg, fallback_raw_positions=cc.nonseg_mask_positions, offset=cc.mask_position_offset)
    batch.update(frames=frames, fbank=fbank, fbank_valid=fbank_valid, mask_positions=positions, gt_mask=gt,
                 is_seg=np.asarray([e.is_seg for e in examples], bool),
                 is_avss=np.asarray([e.is_avss for e in examples], bool),
                 seg_frame=np.asarray([e.seg_frame for e in examples], np.int32),
                 task_id=np.asarray([e.task_id for e in examples], np.int32))
    return batch
