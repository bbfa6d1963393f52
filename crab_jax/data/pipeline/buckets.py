"""Static-shape buckets and the per-epoch batch plan (what every process computes alike).

A *bucket* is ``(seq_len, fbank_frames, media_slots)``: one compiled shape. ``seq_len`` is the smallest of
the configured token buckets that holds the sample after placeholder expansion (longer than
the largest: bad record); ``fbank_frames`` is the longest audio feature length per segment
(:class:`PlanInfo`, from the family's example builder) among the records of that token
bucket. Buckets are keyed by token length only, so tasks whose audio differs in length (AVQA's
2-s windows, the 1-s segments of the others) share batches as in the original's random task
draw: shorter audio is padded to the bucket's length and the family's model ignores the
padded frames exactly (the batch says how many are real). One shape per token bucket.

*Packing* (``data.packing.seq_len`` > 0, :class:`~crab_jax.config.sections.PackingConfig`): the
records the family marks packable (:attr:`PlanInfo.packable`: Crab's LM-only samples) and that fit
are packed several to a row of ``data.packing.seq_len`` tokens (:func:`pack_rows`: first fit over the rows of a global batch, within the
row's sample, frame and audio budgets) and form one more bucket, the packed one
(:attr:`Bucket.segments` > 0); the rest keep their token buckets. The rows are packed once per
run, from an order shuffled by the seed alone: samples of a row never attend to each other, so
which ones share a row changes no gradient, and every epoch has the same number of batches.

The batch plan works on *rows* (:func:`plan_items`): a record of an unpacked bucket is a row of
one. The plan of an epoch (:func:`plan_epoch`) is a pure function of ``(rows, global batch,
seed, epoch)``: every process computes the same plan and takes its own slice of each global
batch, so all processes feed the same shape at every step. Each valid record appears exactly
once per epoch; a bucket's last partial batch is completed with *fillers*: copies of rows of
that batch that the example builder makes add nothing to any loss
(:meth:`~crab_jax.data.pipeline.builder.ExampleBuilder.filler`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Sequence

import numpy as np

from crab_jax.config.sections import PackingConfig
from crab_jax.data.errors import BadRecordError


@dataclasses.dataclass(frozen=True)
class PlanInfo:
    """What bucketing needs to know of a record, computed without decoding frames or fbank.

    Attributes:
      expanded_len: tokens after placeholder expansion (text tokens + media rows).
      fbank_frames: fbank frames per audio segment as the model reads them (0 without audio);
        a family without fbanks puts its audio length here (Crab+: valid mel frames).
      media_slots: a second media buffer size the family sizes per bucket (Crab+: temporal
        slices of frames); 0 when it has none (Crab: its frame slots are fixed per run).
      frames, audio_segments: the frames and audio segments the sample shows (what a packed
        row's media budget counts).
      packable: whether the family can pack the sample with others into one row (Crab: a
        sample without a mask to train); False where unknown (an index of an older version).
    """

    expanded_len: int
    fbank_frames: int
    media_slots: int = 0
    frames: int = 0
    audio_segments: int = 0
    packable: bool = False


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """One static batch shape: token length, fbank frames per audio segment, media slots
    (the longest of the token bucket's records, see :class:`PlanInfo`); for the packed
    bucket also the samples per row (``segments`` > 0) and each row's frame and audio
    segment slots (``frame_slots``, ``audio_slots``; ``data.packing``)."""

    seq_len: int
    fbank_frames: int
    media_slots: int = 0
    segments: int = 0
    frame_slots: int = 0
    audio_slots: int = 0

    @property
    def packed(self) -> bool:
        return self.segments > 0


def choose_seq_bucket(length: int, seq_buckets: Sequence[int], source: str) -> int:
    """Smallest bucket >= ``length``; BadRecordError past the largest."""
    for s in sorted(seq_buckets):
        if length <= s:
            return int(s)
    raise BadRecordError(source, f"{length} tokens after placeholder expansion, longer than the largest "
                                 f"bucket data.buckets={tuple(sorted(seq_buckets))}")


def longest_fbank_frames(infos: Iterable[PlanInfo], fallback: int) -> int:
    """Longest fbank length among samples with audio (``fallback`` if none has audio)."""
    return max((i.fbank_frames for i in infos if i.fbank_frames), default=int(fallback))


def assign_buckets(infos: Sequence[PlanInfo | None], sources: Sequence[str], seq_buckets: Sequence[int],
                   fallback_fbank_frames: int) -> tuple[list[Bucket | None], list[BadRecordError]]:
    """Bucket of each record (None for a bad one) and the too-long records as errors.

    Every record of a token bucket gets the same fbank length and media slots: the longest of
    them (see the module docstring).
    """
    seqs, errors = [], []
    for info, src in zip(infos, sources):
        seq = None
        if info is not None:
            try:
                seq = choose_seq_bucket(info.expanded_len, seq_buckets, src)
            except BadRecordError as e:
                errors.append(e)
        seqs.append(seq)
    members: dict[int, list[PlanInfo]] = collections.defaultdict(list)
    for info, seq in zip(infos, seqs):
        if seq is not None:
            members[seq].append(info)
    fbank = {seq: longest_fbank_frames(m, fallback_fbank_frames) for seq, m in members.items()}
    slots = {seq: max(int(i.media_slots) for i in m) for seq, m in members.items()}
    return [None if seq is None else Bucket(seq, fbank[seq], slots[seq]) for seq in seqs], errors


def row_media_slots(infos: Sequence[PlanInfo], packing: PackingConfig, attr: str) -> int:
    """A packed row's frame (``attr="frames"``) or audio segment slots: ``data.packing``'s value,
    or (0) the row's expected share of the records' media plus the most one record shows,
    within ``samples`` x that most."""
    configured = packing.frame_slots if attr == "frames" else packing.audio_slots
    if configured:
        return int(configured)
    per_sample = max(getattr(i, attr) for i in infos)
    tokens = sum(i.expanded_len for i in infos)
    media = sum(getattr(i, attr) for i in infos)
    expected = -(-media * packing.seq_len // max(tokens, 1))
    return int(min(packing.samples * per_sample, expected + per_sample))


def pack_rows(order: Sequence[int], infos: Sequence[PlanInfo], bucket: Bucket, rows_per_batch: int
              ) -> list[tuple[int, ...]]:
    """Packs the records ``order`` (in that order) into rows of ``bucket`` (packed): first fit
    over the ``rows_per_batch`` open rows, a record going to the first row with room for its
    tokens, frames and audio segments and fewer than ``bucket.segments`` samples; when none
    has room, the open rows are closed and a new set opened. Returns the non-empty rows."""
    out: list[tuple[int, ...]] = []
    rows: list[list[int]] = []
    used: list[list[int]] = []  # per open row: tokens, frames, audio segments

    def close():
        out.extend(tuple(r) for r in rows if r)
        rows.clear()
        used.clear()

    for i in order:
        info = infos[i]
        need = (info.expanded_len, info.frames, info.audio_segments)
        room = (bucket.seq_len, bucket.frame_slots, bucket.audio_slots)
        for r, u in zip(rows, used):
            if len(r) < bucket.segments and all(a + b <= c for a, b, c in zip(u, need, room)):
                r.append(i)
                u[:] = [a + b for a, b in zip(u, need)]
                break
        else:
            if len(rows) == rows_per_batch:
                close()
            rows.append([i])
            used.append(list(need))
    close()
    return out


def plan_items(buckets: Sequence[Bucket | None], infos: Sequence[PlanInfo | None], global_batch: int, seed: int,
               packing: PackingConfig | None = None) -> list[tuple[Bucket, tuple[int, ...]]]:
    """The rows of a run: ``(bucket, record indices)`` per row, in record order for unpacked
    ones (a row of one), then the packed rows (see the module docstring).

    With ``packing``, every packable record (:attr:`PlanInfo.packable`) of at most
    ``packing.seq_len`` tokens goes to the packed bucket.
    """
    packable = [] if packing is None else [
        i for i, (b, info) in enumerate(zip(buckets, infos))
        if b is not None and info.packable and info.expanded_len <= packing.seq_len]
    chosen = set(packable)
    items = [(b, (i,)) for i, b in enumerate(buckets) if b is not None and i not in chosen]
    if packable:
        members = [infos[i] for i in packable]
        fbank = longest_fbank_frames(members, buckets[packable[0]].fbank_frames)
        bucket = Bucket(int(packing.seq_len), fbank, 0, int(packing.samples), row_media_slots(members, packing, "frames"),
                        row_media_slots(members, packing, "audio_segments"))
        too_much = [i for i in packable if infos[i].frames > bucket.frame_slots
                    or infos[i].audio_segments > bucket.audio_slots]
        if too_much:
            raise ValueError(f"config data.packing.frame_slots / audio_slots ({bucket.frame_slots}, "
                             f"{bucket.audio_slots}) are fewer than one sample's media (record {too_much[0]}: "
                             f"{infos[too_much[0]].frames} frames, {infos[too_much[0]].audio_segments} audio segments)")
        order = np.random.default_rng([int(seed), 1 << 20]).permutation(np.asarray(packable, np.int64)).tolist()
        items += [(bucket, row) for row in pack_rows(order, infos, bucket, global_batch)]
    return items


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One global batch: its bucket, the record indices of each row, and which rows are fillers."""

    bucket: Bucket
    records: tuple[tuple[int, ...], ...]
    filler: tuple[bool, ...]


def batches_per_epoch(items: Sequence[tuple[Bucket, tuple[int, ...]]], global_batch: int) -> int:
    counts = collections.Counter(b for b, _ in items)
    return sum(-(-c // global_batch) for c in counts.values())


def plan_epoch(items: Sequence[tuple[Bucket, tuple[int, ...]]], global_batch: int, seed: int, epoch: int,
               shuffle: bool = True) -> list[PlannedBatch]:
    """The global batches of one epoch over the rows ``items`` (:func:`plan_items`; see the
    module docstring); the same result on every process."""
    order = (np.random.default_rng([int(seed), int(epoch)]).permutation(len(items)) if shuffle
             else np.arange(len(items)))
    pending: dict[Bucket, list[tuple[int, ...]]] = {}
    plan = []
    for k in order.tolist():
        b, row = items[k]
        pending.setdefault(b, []).append(row)
        if len(pending[b]) == global_batch:
            plan.append(PlannedBatch(b, tuple(pending.pop(b)), (False,) * global_batch))
    for b in sorted(pending):  # partial batches, completed with fillers (cycled from the batch itself)
        real = pending[b]
        fill = [real[k % len(real)] for k in range(global_batch - len(real))]
        plan.append(PlannedBatch(b, tuple(real + fill), (False,) * len(real) + (True,) * len(fill)))
    return plan
