"""Static-shape buckets and the per-epoch batch plan (what every process computes alike).

A *bucket* is ``(seq_len, fbank_frames, media_slots)``: one compiled shape. ``seq_len`` is the smallest of
the configured token buckets that holds the sample after placeholder expansion (longer than
the largest: bad record); ``fbank_frames`` is the longest audio feature length per segment
(:class:`PlanInfo`, from the family's example builder) among the records of that token
bucket. Buckets are keyed by token length only, so tasks whose audio differs in length (AVQA's
2-s windows, the 1-s segments of the others) share batches as in the original's random task
draw: shorter audio is padded to the bucket's length and the family's model ignores the
padded frames exactly (the batch says how many are real). One shape per token bucket.

The plan of an epoch (:func:`plan_epoch`) is a pure function of ``(buckets of the records,
global batch, seed, epoch)``: every process computes the same plan and takes its own slice
of each global batch, so all processes feed the same shape at every step. Each valid record
appears exactly once per epoch; a bucket's last partial batch is completed with *fillers*:
copies of records of that batch that the example builder makes add nothing to any loss
(:meth:`~crab_jax.data.pipeline.builder.ExampleBuilder.filler`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Sequence

import numpy as np

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
    """

    expanded_len: int
    fbank_frames: int
    media_slots: int = 0


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """One static batch shape: token length, fbank frames per audio segment, media slots
    (the longest of the token bucket's records, see :class:`PlanInfo`)."""

    seq_len: int
    fbank_frames: int
    media_slots: int = 0


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
