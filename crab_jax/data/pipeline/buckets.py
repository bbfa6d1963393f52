"""Static-shape buckets, the per-epoch batch plan, and collation into the batch contract.

A *bucket* is ``(seq_len, fbank_frames)``: one compiled shape. ``seq_len`` is the smallest of
the configured token buckets that holds the sample after placeholder expansion (longer than
the largest: bad record); ``fbank_frames`` is the sample's trimmed fbank length (see
:mod:`crab_jax.families.crab.examples`), so no segment is ever padded inside BEATs. Samples without
audio join the most common fbank length.

The plan of an epoch (:func:`plan_epoch`) is a pure function of ``(buckets of the records,
global batch, seed, epoch)``: every process computes the same plan and takes its own slice
of each global batch, so all processes feed the same shape at every step. Each valid record
appears exactly once per epoch; a bucket's last partial batch is completed with *fillers*:
copies of records of that batch with every label -100 and ``is_seg`` False, which add
nothing to the LM loss (a mean over labelled tokens) nor to the mask loss.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Sequence

import numpy as np

from crab_jax.data.errors import BadRecordError
from crab_jax.families.crab.examples import Example, ExampleSettings, PlanInfo
from crab_jax.data.media.decode import clip_preprocess
from crab_jax.data.text.sequence import IGNORE_INDEX, MediaBlock, expand_placeholders, left_pad_batch, mask_token_positions


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """One static batch shape: token length and fbank frames per audio segment."""

    seq_len: int
    fbank_frames: int

    def spec(self, batch: int, settings: ExampleSettings):
        """The :class:`~crab_jax.families.crab.batch_spec.BatchSpec` of this bucket."""
        from crab_jax.families.crab.batch_spec import BatchSpec  # imports jax: not in decoding workers

        return BatchSpec(batch=batch, seq_len=self.seq_len, frame_slots=settings.frame_slots,
                         audio_slots=settings.audio_slots, fbank_frames=self.fbank_frames,
                         image_size=settings.image_size)


def choose_seq_bucket(length: int, seq_buckets: Sequence[int], source: str) -> int:
    """Smallest bucket >= ``length``; BadRecordError past the largest."""
    for s in sorted(seq_buckets):
        if length <= s:
            return int(s)
    raise BadRecordError(source, f"{length} tokens after placeholder expansion, longer than the largest "
                                 f"bucket data.buckets={tuple(sorted(seq_buckets))}")


def default_fbank_frames(infos: Iterable[PlanInfo | None], fallback: int) -> int:
    """Most common fbank length among samples with audio (smallest on ties; ``fallback`` if none)."""
    counts = collections.Counter(i.fbank_frames for i in infos if i is not None and i.fbank_frames)
    if not counts:
        return int(fallback)
    top = max(counts.values())
    return min(f for f, c in counts.items() if c == top)


def assign_buckets(infos: Sequence[PlanInfo | None], sources: Sequence[str], seq_buckets: Sequence[int],
                   fallback_fbank_frames: int) -> tuple[list[Bucket | None], list[BadRecordError]]:
    """Bucket of each record (None for a bad one) and the too-long records as errors."""
    default_f = default_fbank_frames(infos, fallback_fbank_frames)
    out, errors = [], []
    for info, src in zip(infos, sources):
        if info is None:
            out.append(None)
            continue
        try:
            seq = choose_seq_bucket(info.expanded_len, seq_buckets, src)
        except BadRecordError as e:
            errors.append(e)
            out.append(None)
            continue
        out.append(Bucket(seq, info.fbank_frames or default_f))
    return out, errors


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One global batch: its bucket, the record index of each slot, and which slots are fillers."""

    bucket: Bucket
    records: tuple[int, ...]
    filler: tuple[bool, ...]


def batches_per_epoch(buckets: Sequence[Bucket | None], global_batch: int) -> int:
    counts = collections.Counter(b for b in buckets if b is not None)
    return sum(-(-c // global_batch) for c in counts.values())


def plan_epoch(buckets: Sequence[Bucket | None], global_batch: int, seed: int, epoch: int,
               shuffle: bool = True) -> list[PlannedBatch]:
    """The global batches of one epoch (see the module docstring); same result on every process."""
    valid = np.asarray([i for i, b in enumerate(buckets) if b is not None], np.int64)
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(valid) if shuffle else valid
    pending: dict[Bucket, list[int]] = {}
    plan = []
    for i in order.tolist():
        b = buckets[i]
        pending.setdefault(b, []).append(i)
        if len(pending[b]) == global_batch:
            plan.append(PlannedBatch(b, tuple(pending.pop(b)), (False,) * global_batch))
    for b in sorted(pending):  # partial batches, completed with fillers (cycled from the batch itself)
        real = pending[b]
        fill = [real[k % len(real)] for k in range(global_batch - len(real))]
        plan.append(PlannedBatch(b, tuple(real + fill), (False,) * len(real) + (True,) * len(fill)))
    return plan


# ------------------------------------------------------------------------ collation


@dataclasses.dataclass(frozen=True)
class CollateConfig:
    """Model-side constants of collation (from :class:`CrabConfig`)."""

    pad_token_id: int
    nonseg_mask_positions: tuple[int, ...]
    mask_position_offset: int

    @classmethod
    def from_crab(cls, cfg) -> "CollateConfig":
        return cls(int(cfg.pad_token_id), tuple(cfg.nonseg_mask_positions), int(cfg.mask_position_offset))


def as_filler(ex: Example) -> Example:
    """A copy that contributes nothing to any loss (labels -100, not a segmentation sample)."""
    return dataclasses.replace(ex, labels=np.full_like(ex.labels, IGNORE_INDEX), is_seg=False, is_avss=False)


def blank_example(settings: ExampleSettings, pad_id: int) -> Example:
    """A one-token, media-free filler for a batch whose every record failed to decode."""
    h = settings.image_size
    return Example(source="<blank>", index=-1, task_id=0, input_ids=np.asarray([pad_id], np.int32),
                   labels=np.asarray([IGNORE_INDEX], np.int32), visual=[], frames=np.zeros((0, h, h, 3), np.uint8),
                   fbank=np.zeros((0, 16, 128), np.float32), gt_mask=np.zeros((1, h, h), np.float32),
                   is_seg=False, is_avss=False)


def media_blocks(ex: Example, settings: ExampleSettings) -> dict[int, MediaBlock]:
    """Placeholder id -> rows of the media buffer (:func:`media_layout`: visual rows, then audio)."""
    qv, qa = settings.visual_queries, settings.audio_queries
    blocks, row = {}, settings.visual_offset
    for pid, count in ex.visual:
        blocks[pid] = MediaBlock(row, count * qv)
        row += count * qv
    if ex.fbank.shape[0]:
        blocks[int(settings.token_ids["<audio>"])] = MediaBlock(settings.audio_offset, ex.fbank.shape[0] * qa)
    return blocks


def fits(ex: Example, bucket: Bucket, settings: ExampleSettings) -> str | None:
    """Why ``ex`` does not fit ``bucket`` (None when it fits)."""
    blocks = media_blocks(ex, settings)
    n = len(ex.input_ids) + sum(b.length - 1 for b in blocks.values())
    if n > bucket.seq_len:
        return f"{n} tokens after expansion, more than its planned bucket {bucket.seq_len}"
    if ex.fbank.shape[0] and ex.fbank_frames != bucket.fbank_frames:
        return f"{ex.fbank_frames} fbank frames, its planned bucket has {bucket.fbank_frames}"
    return None


def collate(examples: Sequence[Example], bucket: Bucket, settings: ExampleSettings,
            cc: CollateConfig) -> dict[str, np.ndarray]:
    """Examples (all fitting ``bucket``) -> one batch in the :mod:`crab_jax.families.crab.batch_spec` format."""
    b, h = len(examples), settings.image_size
    frames = np.zeros((b, settings.frame_slots, 3, h, h), np.float32)
    fbank = np.zeros((b, settings.audio_slots, bucket.fbank_frames, 128), np.float32)
    gt = np.zeros((b, 1, h, h), np.float32)
    assembled = []
    for i, ex in enumerate(examples):
        assembled.append(expand_placeholders(ex.input_ids, ex.labels, media_blocks(ex, settings)))
        if ex.frames.shape[0]:
            frames[i, : ex.frames.shape[0]] = clip_preprocess(ex.frames, h)
        if ex.fbank.shape[0]:
            fbank[i, : ex.fbank.shape[0]] = ex.fbank
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
    batch.update(frames=frames, fbank=fbank, mask_positions=positions, gt_mask=gt,
                 is_seg=np.asarray([e.is_seg for e in examples], bool),
                 is_avss=np.asarray([e.is_avss for e in examples], bool),
                 task_id=np.asarray([e.task_id for e in examples], np.int32))
    return batch
