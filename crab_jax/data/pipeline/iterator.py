"""The batch iterator: local batches from Grain, bad-record accounting, checkpointable state.

The main process strips each batch's report (:meth:`SlotDecoder.collate
<crab_jax.data.pipeline.decoder.SlotDecoder.collate>`), updates :meth:`BatchIterator.stats`,
and stops the run when the bad fraction passes ``data.max_bad_fraction``
(:class:`TooManyBadRecordsError`, with paths and reasons). Its state is the number of
batches it has produced (+ its stats): JSON-able, and exact on restore because the plan is
a pure function of (records, seed, epoch).
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Iterator, Mapping, Sequence

import grain

from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.decoder import SlotDecoder
from crab_jax.data.pipeline.workers import with_workers

log = logging.getLogger(__name__)
MAX_REPORTED = 20          # bad records listed by name in stats() / the stop report
MIN_SEEN_FOR_STOP = 32     # the running bad fraction is judged only after this many records
STATE_KIND = "crab_grain"  # written into checkpoints: kept so saved runs resume


class TooManyBadRecordsError(RuntimeError):
    """More than ``data.max_bad_fraction`` of the records were unusable (message = report)."""


def bad_reason_key(e: BadRecordError) -> str:
    """A short category of a BadRecordError's reason (the keys of ``stats()['bad_by_reason']``)."""
    r = e.reason.lower()
    for key, words in (("missing_file", ("not found",)), ("empty_file", ("0 bytes", "empty")),
                       ("truncated", ("truncated",)), ("too_long", ("longer than", "more than its planned")),
                       ("too_many_media", ("data.frame_slots", "data.audio_slots")),
                       ("too_short", ("too short", "at least")),
                       ("undecodable", ("decod", "cannot open", "cannot read", "no video stream")),
                       ("annotation", ("missing field", "bad value", "json", "csv", "entry"))):
        if any(w in r for w in words):
            return key
    return "other"


class BatchIterator(Iterator[dict]):
    """Endless (or ``num_epochs``) iterator of local batches with checkpointable state.

    ``next()`` gives this process's part of the global batch: a dict of the family's batch
    keys (``batch = global_batch / shard_count``). ``stats()`` gives the counters for logs;
    ``last_report`` the per-batch report (record indices, bucket) of the last batch.
    """

    def __init__(self, decoder: SlotDecoder, *, max_bad_fraction: float, num_epochs: int | None = None,
                 workers: int = 0, read_threads: int | None = None, prefetch: int | None = None,
                 initial_bad: Sequence[BadRecordError] = (), num_records: int = 0):
        self.decoder = decoder
        self.num_epochs = num_epochs
        self.workers = int(workers)
        # Batches decoded ahead: per worker process (each decodes whole batches, one thread
        # each by default: the processes are the parallelism), or in this process' threads.
        self.read_threads = int(read_threads or (1 if self.workers else 4))
        self.prefetch = int(prefetch or (2 if self.workers else 8))
        self.max_bad_fraction = float(max_bad_fraction)
        self.num_records = int(num_records)
        self.position = 0
        self.last_report: dict | None = None
        self._initial = [(e.path, e.path, e.reason) for e in initial_bad]
        self._stats = self._fresh_stats()
        self._it = None
        self._check_fraction(len(self._initial), self.num_records + len(self._initial), "plan index")

    def _fresh_stats(self) -> dict:
        by_reason = collections.Counter(bad_reason_key(BadRecordError(p, r)) for _, p, r in self._initial)
        return {"index_bad": len(self._initial), "seen": 0, "bad": 0, "filler": 0,
                "bad_by_reason": dict(by_reason), "bad_examples": [f"{p}: {r}" for _, p, r in self._initial][:MAX_REPORTED],
                "batches": 0}

    # -- plumbing --------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        return self.decoder.per_epoch

    def bucket_specs(self) -> list:
        """The family's BatchSpec (local batch) of every bucket in use: one compile each."""
        used = sorted({b for b in self.decoder.buckets if b is not None})
        return [self.decoder.builder.bucket_spec(b, self.decoder.local_batch) for b in used]

    def _build(self):
        L = self.decoder.local_batch
        total = (self.num_epochs * self.batches_per_epoch if self.num_epochs else self.batches_per_epoch * 10 ** 9)
        ds = grain.MapDataset.range(self.position * L, total * L).map(self.decoder)
        ds = ds.batch(L, drop_remainder=True, batch_fn=self.decoder.collate)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch))
        return iter(with_workers(ds, self.workers))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.num_epochs and self.position >= self.num_epochs * self.batches_per_epoch:
            raise StopIteration
        if self._it is None:
            self._it = self._build()
        batch, report = next(self._it)
        self.position += 1
        self._account(report)
        self.last_report = report
        return batch

    # -- bad records -------------------------------------------------------------------
    def _account(self, report: dict) -> None:
        s = self._stats
        s["batches"] += 1
        s["seen"] += report["seen"]
        s["filler"] += report["filler"]
        for source, path, reason in report["bad"]:
            s["bad"] += 1
            key = bad_reason_key(BadRecordError(path, reason))
            s["bad_by_reason"][key] = s["bad_by_reason"].get(key, 0) + 1
            if len(s["bad_examples"]) < MAX_REPORTED:
                s["bad_examples"].append(f"{path}: {reason} (record {source})")
            log.warning("bad record skipped: %s: %s (record %s)", path, reason, source)
        if s["seen"] >= MIN_SEEN_FOR_STOP:
            self._check_fraction(s["bad"], s["seen"], "decoding")

    def _check_fraction(self, bad: int, total: int, phase: str) -> None:
        if total and bad / total > self.max_bad_fraction:
            raise TooManyBadRecordsError(self.report(f"{bad} of {total} records bad during {phase} "
                                                     f"({bad / total:.1%} > data.max_bad_fraction="
                                                     f"{self.max_bad_fraction:.1%})"))

    def report(self, headline: str = "data pipeline") -> str:
        s = self._stats
        lines = [headline, f"  counts: seen={s['seen']} bad={s['bad']} index_bad={s['index_bad']} "
                           f"filler={s['filler']}", f"  by reason: {s['bad_by_reason']}"]
        lines += [f"  {x}" for x in s["bad_examples"]]
        return "\n".join(lines)

    def stats(self) -> dict:
        """``seen``, ``bad``, ``index_bad``, ``filler``, ``batches``, ``bad_by_reason``, ``bad_examples``."""
        return json.loads(json.dumps(self._stats))

    # -- checkpointing -------------------------------------------------------------------
    def get_state(self) -> dict:
        d = self.decoder
        return {"kind": STATE_KIND, "position": self.position, "seed": d.seed, "global_batch": d.global_batch,
                "shard_index": d.shard_index, "shard_count": d.shard_count, "num_records": len(d.buckets),
                "stats": self.stats()}

    def set_state(self, state: Mapping) -> None:
        d = self.decoder
        want = {"kind": STATE_KIND, "seed": d.seed, "global_batch": d.global_batch, "num_records": len(d.buckets)}
        wrong = {k: state.get(k) for k, v in want.items() if state.get(k) != v}
        if wrong:
            raise ValueError(f"data iterator state does not match this pipeline: state has {wrong}, "
                             f"this pipeline {({k: want[k] for k in wrong})}")
        self.position = int(state["position"])
        if "stats" in state and int(state.get("shard_index", d.shard_index)) == d.shard_index:
            self._stats = json.loads(json.dumps(state["stats"]))
        self._it = None  # rebuilt lazily from the new position
