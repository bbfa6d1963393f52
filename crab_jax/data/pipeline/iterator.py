"""The batch iterator: local batches from Grain, bad-record accounting, checkpointable state.

The main process strips each batch's report (:meth:`SlotDecoder.collate
<crab_jax.data.pipeline.decoder.SlotDecoder.collate>`), updates :meth:`BatchIterator.stats`,
logs each bad record once (rate-limited) and stops the run when the bad records pass
``data.max_bad_fraction`` by the rule of :class:`~crab_jax.data.pipeline.bad_records.BadRecordLimit`
(:class:`TooManyBadRecordsError`, with paths and reasons). Its state is the number of
batches it has produced (+ its stats): JSON-able, and exact on restore because the plan is
a pure function of (records, seed, epoch).
"""

from __future__ import annotations

import collections
import json
from typing import Iterator, Mapping, Sequence

import grain

from crab_jax.data.errors import BadFileError, BadRecordError
from crab_jax.data.pipeline.bad_records import BadRecordLimit, BadRecordLog, bad_reason_key, task_key
from crab_jax.data.pipeline.decoder import SlotDecoder
from crab_jax.data.pipeline.workers import with_workers

MAX_REPORTED = 20          # bad records listed by name in stats() / the stop report
STATE_KIND = "crab_grain"  # written into checkpoints: kept so saved runs resume


class TooManyBadRecordsError(RuntimeError):
    """More than ``data.max_bad_fraction`` of the records were unusable (message = report)."""


class BatchIterator(Iterator[dict]):
    """Endless (or ``num_epochs``) iterator of local batches with checkpointable state.

    ``next()`` gives this process's part of the global batch: a dict of the family's batch
    keys (``batch = global_batch / shard_count``). ``stats()`` gives the counters for logs;
    ``last_report`` the per-batch report (record indices, bucket) of the last batch.
    ``initial_bad``: the records found bad before decoding (reader, plan index, too long),
    each with its task where known; ``skipped_files``: annotation files the run goes on
    without (``data.skip_bad_files``); ``record_tasks``: the task of each record index
    (decoding errors are counted per task; None: per annotation file).
    """

    def __init__(self, decoder: SlotDecoder, *, max_bad_fraction: float, num_epochs: int | None = None,
                 workers: int = 0, read_threads: int | None = None, prefetch: int | None = None,
                 initial_bad: Sequence[BadRecordError] = (), num_records: int = 0,
                 skipped_files: Sequence[BadFileError] = (), record_tasks: Sequence[str] | None = None):
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
        self._record_tasks = record_tasks
        self._initial = [(e.path, e.path, e.reason, task_key(e.task, e.path)) for e in initial_bad]
        self._skipped = [f"{e.path}: {e.reason} ({e.lost()}{', task ' + e.task if e.task else ''})"
                         for e in skipped_files]
        self._bad_indices: set[int] = set()  # records that failed to decode (logged once, counted once)
        self.limit = BadRecordLimit(self.max_bad_fraction, self.num_records + len(self._initial), self.num_records,
                                    bool(decoder.shuffle))
        self._decode_log = BadRecordLog("decoding")
        index_log = BadRecordLog("indexing")
        for args in self._initial:
            index_log(*args)
        self._index_not_logged = index_log.not_logged
        self._stats = self._fresh_stats()
        self._it = None
        self._stop_if(self.limit.check(len(self._initial)))

    def _fresh_stats(self) -> dict:
        by_reason = collections.Counter(bad_reason_key(BadRecordError(p, r)) for _, p, r, _ in self._initial)
        by_task = collections.Counter(t for *_, t in self._initial)
        return {"index_bad": len(self._initial), "seen": 0, "bad": 0, "filler": 0, "bad_records": 0,
                "bad_not_logged": self._index_not_logged, "skipped_files": len(self._skipped),
                "bad_by_reason": dict(by_reason), "bad_by_task": dict(by_task),
                "bad_examples": [f"{p}: {r}" for _, p, r, _ in self._initial][:MAX_REPORTED],
                "skipped_file_notes": list(self._skipped), "batches": 0}

    # -- plumbing --------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        return self.decoder.per_epoch

    def bucket_specs(self) -> list:
        """The family's BatchSpec (local batch) of every bucket in use: one compile each."""
        used = sorted({b for b, _ in self.decoder.items})
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
    def _task_of(self, index: int, record: str) -> str:
        return task_key(None if self._record_tasks is None else self._record_tasks[index], record)

    def _account(self, report: dict) -> None:
        s = self._stats
        s["batches"] += 1
        s["seen"] += report["seen"]
        s["filler"] += report["filler"]
        for index, record, path, reason in report["bad"]:
            task = self._task_of(index, record)
            s["bad"] += 1
            key = bad_reason_key(BadRecordError(path, reason))
            s["bad_by_reason"][key] = s["bad_by_reason"].get(key, 0) + 1
            s["bad_by_task"][task] = s["bad_by_task"].get(task, 0) + 1
            if index in self._bad_indices:
                continue  # failed in an earlier epoch too: logged and counted as a record then
            self._bad_indices.add(index)
            s["bad_records"] = len(self._bad_indices)
            if len(s["bad_examples"]) < MAX_REPORTED:
                s["bad_examples"].append(f"{path}: {reason} (record {record})")
            if not self._decode_log(record, path, reason, task):
                s["bad_not_logged"] += 1
        self._stop_if(self.limit.check(s["index_bad"], len(self._bad_indices), s["seen"], s["bad"],
                                       first_epoch=self.position <= self.batches_per_epoch))

    def _stop_if(self, why: str | None) -> None:
        if why:
            raise TooManyBadRecordsError(self.report(why))

    def report(self, headline: str = "data pipeline") -> str:
        s = self._stats
        lines = [headline, f"  counts: seen={s['seen']} bad={s['bad']} index_bad={s['index_bad']} "
                           f"filler={s['filler']}", f"  by reason: {s['bad_by_reason']}",
                 f"  by task: {s['bad_by_task']}"]
        lines += [f"  {x}" for x in s["bad_examples"]]
        return "\n".join(lines)

    def stats(self) -> dict:
        """The pipeline's counters (JSON-able).

        ``index_bad``: records bad before decoding (reader, plan index, too long); ``seen`` /
        ``bad`` / ``filler``: decoded slots, those that failed, filler slots (every epoch);
        ``bad_records``: distinct records that failed to decode; ``bad_by_reason`` /
        ``bad_by_task``: both phases' bad records per reason category / task;
        ``bad_examples``: the first :data:`MAX_REPORTED` as ``"path: reason"``;
        ``bad_not_logged``: bad records counted but not logged one by one;
        ``skipped_files`` / ``skipped_file_notes``: annotation files skipped whole
        (``data.skip_bad_files``); ``batches``.
        """
        return json.loads(json.dumps(self._stats))

    # -- checkpointing -------------------------------------------------------------------
    def get_state(self) -> dict:
        d = self.decoder
        return {"kind": STATE_KIND, "position": self.position, "seed": d.seed, "global_batch": d.global_batch,
                "shard_index": d.shard_index, "shard_count": d.shard_count, "num_records": len(d.buckets),
                "num_rows": len(d.items),
                "stats": self.stats(), "bad_indices": sorted(self._bad_indices)}

    def set_state(self, state: Mapping) -> None:
        d = self.decoder
        want = {"kind": STATE_KIND, "seed": d.seed, "global_batch": d.global_batch, "num_records": len(d.buckets)}
        if "num_rows" in state:  # older states predate packing: they had a row per record
            want["num_rows"] = len(d.items)
        wrong = {k: state.get(k) for k, v in want.items() if state.get(k) != v}
        if wrong:
            raise ValueError(f"data iterator state does not match this pipeline: state has {wrong}, "
                             f"this pipeline {({k: want[k] for k in wrong})}")
        self.position = int(state["position"])
        if "stats" in state and int(state.get("shard_index", d.shard_index)) == d.shard_index:
            # Older states lack some counters; the files skipped are this run's.
            self._stats = {**self._fresh_stats(), **json.loads(json.dumps(state["stats"]))}
            self._stats.update(skipped_files=len(self._skipped), skipped_file_notes=list(self._skipped))
            self._bad_indices = {int(i) for i in state.get("bad_indices", ())}
        self._it = None  # rebuilt lazily from the new position
