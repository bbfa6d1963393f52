"""Static-shape buckets and the per-epoch batch plan (what every process computes alike).

A *bucket* is ``(seq_len, fbank_frames)``: one compiled shape. ``seq_len`` is the smallest of
the configured token buckets that holds the sample after placeholder expansion (longer than
the largest: bad record); ``fbank_frames`` is the sample's audio feature length per segment
(:class:`PlanInfo`, from the family's example builder), so no segment is padded inside the
audio encoder. Samples without audio join the most common fbank length.

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
      fbank_frames: fbank frames per audio segment as the model reads them (0 without audio).
    """

    expanded_len: int
    fbank_frames: int


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """One static batch shape: token length and fbank frames per audio segment."""

    seq_len: int
    fbank_frames: int


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
