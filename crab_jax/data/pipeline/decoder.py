"""What a Grain worker runs: one slot of a local batch -> its example, then the slots -> a batch.

Slot ``s`` of the stream is slot ``s % local_batch`` of local batch ``s // local_batch``; the
epoch plan (:func:`~crab_jax.data.pipeline.buckets.plan_epoch`) says which record fills it
and whether it is a filler. A record that fails to decode (or no longer fits its planned
bucket) is replaced in its batch by a filler and reported, never raised: the main process
counts it (:class:`~crab_jax.data.pipeline.iterator.BatchIterator`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.buckets import Bucket, PlannedBatch, batches_per_epoch, plan_epoch


@dataclasses.dataclass(frozen=True)
class SlotResult:
    """One decoded slot of a local batch: the example (None when its record failed), the record
    index, whether the slot is a filler, and why the record failed."""

    example: Any
    index: int
    filler: bool
    error: tuple[str, str, str] | None  # (record source, file, reason)


@dataclasses.dataclass(eq=False)
class SlotDecoder:
    """Picklable worker function: local slot number -> :class:`SlotResult`; and the batch_fn."""

    source: Any
    buckets: tuple[Bucket | None, ...]
    global_batch: int
    seed: int
    shuffle: bool
    shard_index: int
    shard_count: int
    _plans: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def builder(self):
        return self.source.builder

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.shard_count

    @functools.cached_property
    def per_epoch(self) -> int:
        return batches_per_epoch(self.buckets, self.global_batch)

    def _plan(self, epoch: int) -> list[PlannedBatch]:
        if epoch not in self._plans:
            self._plans.clear()  # one epoch at a time (a plan holds one entry per record)
            self._plans[epoch] = plan_epoch(self.buckets, self.global_batch, self.seed, epoch, self.shuffle)
        return self._plans[epoch]

    def planned(self, batch_number: int) -> PlannedBatch:
        return self._plan(batch_number // self.per_epoch)[batch_number % self.per_epoch]

    def __call__(self, slot: int) -> tuple[Bucket, SlotResult]:
        k, j = divmod(int(slot), self.local_batch)
        pb = self.planned(k)
        g = self.shard_index * self.local_batch + j
        index, filler = pb.records[g], pb.filler[g]
        try:
            ex = self.source.example(index)
            why = self.builder.fits(ex, pb.bucket)
            if why:
                raise BadRecordError(self.source.sources[index], why)
        except BadRecordError as e:
            return pb.bucket, SlotResult(None, index, filler, (self.source.sources[index], e.path, e.reason))
        return pb.bucket, SlotResult(self.builder.filler(ex) if filler else ex, index, filler, None)

    def collate(self, results: Sequence[tuple[Bucket, SlotResult]]) -> tuple[dict, dict]:
        """Slots of one local batch -> (batch arrays, report of this batch: ``seen`` / ``filler``
        slots, ``bad`` as ``(record index, record source, file, reason)``, ``bucket``, ``records``)."""
        bucket = results[0][0]
        good = [r.example for _, r in results if r.example is not None]
        spare = self.builder.filler(good[0]) if good else self.builder.blank()
        exs = [r.example if r.example is not None else spare for _, r in results]
        report = {"seen": sum(1 for _, r in results if not r.filler),
                  "filler": sum(1 for _, r in results if r.filler or r.example is None),
                  "bad": [(r.index,) + r.error for _, r in results if r.error is not None and not r.filler],
                  "bucket": [bucket.seq_len, bucket.fbank_frames],
                  "records": [(-1 if r.example is None or r.filler else r.index) for _, r in results]}
        return self.builder.collate(exs, bucket), report
