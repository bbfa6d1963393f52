"""What a Grain worker runs: one slot (row) of a local batch -> its examples, then the slots -> a batch.

Slot ``s`` of the stream is row ``s % local_batch`` of local batch ``s // local_batch``; the
epoch plan (:func:`~crab_jax.data.pipeline.buckets.plan_epoch`) says which records fill it
(one, or several in a packed bucket's row) and whether it is a filler. A record that fails to
decode (or no longer fits its planned bucket) is reported, never raised, and left out: its
row is replaced by a filler when it was the row's only record; the main process counts it
(:class:`~crab_jax.data.pipeline.iterator.BatchIterator`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.buckets import Bucket, PlannedBatch, batches_per_epoch, plan_epoch


@dataclasses.dataclass(frozen=True)
class SlotResult:
    """One decoded slot (row) of a local batch: the examples of its records that decoded (none
    when all failed), their record indices, whether the row is a filler, and why records failed."""

    examples: tuple
    indices: tuple[int, ...]
    filler: bool
    errors: tuple[tuple[int, str, str, str], ...]  # (record index, record source, file, reason)


@dataclasses.dataclass(eq=False)
class SlotDecoder:
    """Picklable worker function: local slot number -> :class:`SlotResult`; and the batch_fn."""

    source: Any
    buckets: tuple[Bucket | None, ...]     # per record (None: unusable)
    items: tuple[tuple[Bucket, tuple[int, ...]], ...]  # the rows (buckets.plan_items)
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
        return batches_per_epoch(self.items, self.global_batch)

    def _plan(self, epoch: int) -> list[PlannedBatch]:
        if epoch not in self._plans:
            self._plans.clear()  # one epoch at a time (a plan holds one entry per record)
            self._plans[epoch] = plan_epoch(self.items, self.global_batch, self.seed, epoch, self.shuffle)
        return self._plans[epoch]

    def planned(self, batch_number: int) -> PlannedBatch:
        return self._plan(batch_number // self.per_epoch)[batch_number % self.per_epoch]

    def _decode(self, index: int, bucket: Bucket):
        ex = self.source.example(index)
        why = self.builder.fits(ex, bucket)
        if why:
            raise BadRecordError(self.source.sources[index], why)
        return ex

    def __call__(self, slot: int) -> tuple[Bucket, SlotResult]:
        k, j = divmod(int(slot), self.local_batch)
        pb = self.planned(k)
        g = self.shard_index * self.local_batch + j
        indices, filler = pb.records[g], pb.filler[g]
        examples, good, errors = [], [], []
        for index in indices:
            try:
                ex = self._decode(index, pb.bucket)
            except BadRecordError as e:
                errors.append((index, self.source.sources[index], e.path, e.reason))
                continue
            examples.append(self.builder.filler(ex) if filler else ex)
            good.append(index)
        return pb.bucket, SlotResult(tuple(examples), tuple(good), filler, tuple(errors))

    def collate(self, results: Sequence[tuple[Bucket, SlotResult]]) -> tuple[dict, dict]:
        """Slots of one local batch -> (batch arrays, report of this batch: ``seen`` / ``filler``
        records, ``bad`` as ``(record index, record source, file, reason)``, ``bucket``,
        ``records``: the record of each row, -1 for a filler; a packed row's first)."""
        bucket = results[0][0]
        good = [r.examples[0] for _, r in results if r.examples]
        spare = self.builder.filler(good[0]) if good else self.builder.blank()
        rows = [list(r.examples) if r.examples else [spare] for _, r in results]
        report = {"seen": sum(len(r.indices) + len(r.errors) for _, r in results if not r.filler),
                  "filler": sum(1 for _, r in results if r.filler or not r.examples),
                  "bad": [e for _, r in results if not r.filler for e in r.errors],
                  "bucket": [bucket.seq_len, bucket.fbank_frames],
                  "records": [(-1 if not r.indices or r.filler else r.indices[0]) for _, r in results]}
        if bucket.packed:
            report["packed_samples"] = sum(len(r.indices) for _, r in results if not r.filler)
            return self.builder.collate_packed(rows, bucket), report
        return self.builder.collate([row[0] for row in rows], bucket), report
