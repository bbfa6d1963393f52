"""The training input pipeline: records -> planned static-shape batches, decoded by Grain workers.

Stages (each process runs the same ones)::

    records (every task of data.tasks, bad annotation entries counted)
      -> plan index: PlanInfo per record (token length, fbank frames; decodes audio only,
         cached on disk) -> Bucket per record (too long: bad record, counted)
      -> plan_epoch(seed, epoch): global batches, fillers complete each bucket's last batch
      -> this process's slice of every global batch (ShardByJaxProcess or given ShardOptions)
      -> Grain MapDataset over slots: decode (media, fbank, tokens) in worker processes,
         batch with collation into the BatchSpec format; a record that fails to decode is
         replaced in its batch by a filler and counted
      -> main process: strips the per-batch report, updates stats(), stops the run when the
         bad fraction passes data.max_bad_fraction (TooManyBadRecordsError with paths + reasons)

The iterator's state is the number of batches it has produced (+ its stats): JSON-able, and
exact on restore because the plan is a pure function of (records, seed, epoch).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from crab_jax.families.crab import examples as E
from crab_jax.data.pipeline.buckets import (Bucket, CollateConfig, PlannedBatch, as_filler, assign_buckets, batches_per_epoch,
                                   blank_example, collate, fits, plan_epoch)
from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.readers import CRAB_TASKS, PRETRAIN_TASKS, CrabLayout, Record, read_crab_task, read_pretrain_task

log = logging.getLogger(__name__)
MAX_REPORTED = 20          # bad records listed by name in stats() / the stop report
MIN_RECORDS_PER_INDEX_WORKER = 64
MIN_SEEN_FOR_STOP = 32     # the running bad fraction is judged only after this many records


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


# ---------------------------------------------------------------------- sources


class ExampleSource(Protocol):
    """Random access to examples: raw AV-UIE records or prepared ArrayRecord shards."""

    sources: Sequence[str]

    def __len__(self) -> int: ...

    def plan_info(self, index: int) -> E.PlanInfo: ...

    def example(self, index: int) -> E.Example: ...


@dataclasses.dataclass
class RawRecordSource:
    """Decodes AV-UIE records on the fly (:func:`crab_jax.families.crab.examples.build_example`)."""

    records: Sequence[Record]
    tokenizer: Any
    settings: E.ExampleSettings

    @property
    def sources(self) -> list[str]:
        return [r.source for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def plan_info(self, index: int) -> E.PlanInfo:
        return E.plan_info(self.records[index], self.tokenizer, self.settings)

    def example(self, index: int) -> E.Example:
        return E.build_example(self.records[index], self.tokenizer, self.settings, index)

    def cache_key(self) -> str:
        """Changes with the records, their media files (size, mtime), the settings and the vocabulary."""
        h = hashlib.sha256()
        h.update(repr(dataclasses.asdict(self.settings)).encode())
        h.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
        for r in self.records:
            h.update(repr(r).encode())
            for p in r.media_paths():
                try:
                    st = os.stat(os.path.join(self.settings.data_root, p))
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(b"missing")
        return h.hexdigest()[:24]


def read_records(data_root: str | os.PathLike, tasks: Sequence[str], mode: str = "train", *,
                 layout: CrabLayout = CrabLayout(), seed: int = 0) -> tuple[list[Record], list[BadRecordError]]:
    """Every record of ``tasks`` (Crab fine-tuning or pretraining sets), bad entries collected."""
    records, errors = [], []
    for task in tasks:
        try:
            if task in CRAB_TASKS:
                res = read_crab_task(task, mode, data_root, layout=layout, seed=seed, strict=False)
            elif task in PRETRAIN_TASKS:
                res = read_pretrain_task(task, data_root, mode=mode, layout=layout, strict=False)
            else:
                raise ValueError(f"data.tasks: unknown task {task!r}; known: {CRAB_TASKS + PRETRAIN_TASKS}")
        except BadRecordError as e:  # a whole annotation file missing / unreadable
            errors.append(e)
            continue
        records += res.records
        errors += res.errors
    return records, errors


# -------------------------------------------------------------------- plan index


@dataclasses.dataclass(frozen=True)
class _PlanInfoFn:
    """Picklable ``index -> PlanInfo | BadRecordError`` for Grain workers."""

    source: Any

    def __call__(self, index: int):
        try:
            return self.source.plan_info(int(index))
        except BadRecordError as e:
            return e


def absl_flags_ready() -> None:
    """Grain's worker processes read absl flags; outside an absl app they were never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def with_workers(ds, workers: int):
    """``ds.mp_prefetch`` with ``workers`` processes (0: decode in this process)."""
    import grain

    if workers <= 0:
        return ds
    absl_flags_ready()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


def _parallel_map(fn, n: int, workers: int, desc: str, progress: bool) -> list:
    import grain
    from tqdm import tqdm

    # Worker processes take seconds to start: only worth it for a long index.
    workers = workers if n >= MIN_RECORDS_PER_INDEX_WORKER * max(workers, 1) else 0
    ds = with_workers(grain.MapDataset.range(n).map(fn).to_iter_dataset(), workers)
    return list(tqdm(ds, total=n, desc=desc, unit="rec", disable=not progress))


def build_plan_index(source, *, workers: int = 0, cache_dir: str | None = None,
                     progress: bool = False) -> list[E.PlanInfo | BadRecordError]:
    """PlanInfo (or the BadRecordError) of every record, cached as JSON under ``cache_dir``."""
    path = None
    if cache_dir and hasattr(source, "cache_key"):
        path = pathlib.Path(cache_dir) / f"plan_index-{source.cache_key()}.json"
        if path.is_file():
            rows = json.loads(path.read_text())
            return [E.PlanInfo(**r) if "expanded_len" in r else BadRecordError(r["path"], r["reason"]) for r in rows]
    out = _parallel_map(_PlanInfoFn(source), len(source), workers, "plan index", progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [dataclasses.asdict(x) if isinstance(x, E.PlanInfo) else {"path": x.path, "reason": x.reason}
                for x in out]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(path)
    return out


# ------------------------------------------------------------------ slot decoding


@dataclasses.dataclass(frozen=True)
class SlotResult:
    """One decoded slot of a local batch: the example, or why its record failed."""

    example: E.Example | None
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
    settings: E.ExampleSettings
    collate_config: CollateConfig
    _plans: dict = dataclasses.field(default_factory=dict, repr=False)

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
            why = fits(ex, pb.bucket, self.settings)
            if why:
                raise BadRecordError(self.source.sources[index], why)
        except BadRecordError as e:
            return pb.bucket, SlotResult(None, filler, (self.source.sources[index], e.path, e.reason))
        return pb.bucket, SlotResult(as_filler(ex) if filler else ex, filler, None)

    def collate(self, results: Sequence[tuple[Bucket, SlotResult]]) -> tuple[dict, dict]:
        """Slots of one local batch -> (batch arrays, report of this batch)."""
        bucket = results[0][0]
        good = [r.example for _, r in results if r.example is not None]
        spare = as_filler(good[0]) if good else blank_example(self.settings, self.collate_config.pad_token_id)
        exs = [r.example if r.example is not None else spare for _, r in results]
        report = {"seen": sum(1 for _, r in results if not r.filler),
                  "filler": sum(1 for _, r in results if r.filler or r.example is None),
                  "bad": [r.error for _, r in results if r.error is not None and not r.filler],
                  "bucket": [bucket.seq_len, bucket.fbank_frames],
                  "records": [(-1 if r.example is None or r.filler else r.example.index) for _, r in results]}
        return collate(exs, bucket, self.settings, self.collate_config), report


# ---------------------------------------------------------------------- iterator


class CrabBatchIterator(Iterator[dict]):
    """Endless (or ``num_epochs``) iterator of local batches with checkpointable state.

    ``next()`` gives this process's part of the global batch: a dict of the BatchSpec keys
    (``batch = global_batch / shard_count``). ``stats()`` gives the counters for logs;
    ``last_report`` the per-batch report (record indices, bucket) of the last batch.
    """

    def __init__(self, decoder: SlotDecoder, *, num_epochs: int | None = None, workers: int = 0,
                 read_threads: int | None = None, prefetch: int | None = None, max_bad_fraction: float = 0.01,
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
        """The BatchSpec (local batch) of every bucket in use: one compile each."""
        used = sorted({b for b in self.decoder.buckets if b is not None})
        return [b.spec(self.decoder.local_batch, self.decoder.settings) for b in used]

    def _build(self):
        import grain

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
        return {"kind": "crab_grain", "position": self.position, "seed": d.seed, "global_batch": d.global_batch,
                "shard_index": d.shard_index, "shard_count": d.shard_count, "num_records": len(d.buckets),
                "stats": self.stats()}

    def set_state(self, state: Mapping) -> None:
        d = self.decoder
        want = {"kind": "crab_grain", "seed": d.seed, "global_batch": d.global_batch, "num_records": len(d.buckets)}
        wrong = {k: state.get(k) for k, v in want.items() if state.get(k) != v}
        if wrong:
            raise ValueError(f"data iterator state does not match this pipeline: state has {wrong}, "
                             f"this pipeline {({k: want[k] for k in wrong})}")
        self.position = int(state["position"])
        if "stats" in state and int(state.get("shard_index", d.shard_index)) == d.shard_index:
            self._stats = json.loads(json.dumps(state["stats"]))
        self._it = None  # rebuilt lazily from the new position


# ----------------------------------------------------------------------- builders


def _shard(shard_options) -> tuple[int, int]:
    import grain

    opts = shard_options if shard_options is not None else grain.sharding.ShardByJaxProcess(drop_remainder=False)
    return int(opts.shard_index), int(opts.shard_count)


def make_iterator(source, settings: E.ExampleSettings, collate_config: CollateConfig, *, global_batch: int,
                  seq_buckets: Sequence[int], seed: int = 0, shuffle: bool = True, shard_options=None,
                  num_epochs: int | None = None, workers: int = 0, index_workers: int | None = None,
                  read_threads: int | None = None, prefetch: int | None = None,
                  max_bad_fraction: float = 0.01, fallback_fbank_frames: int = 96, cache_dir: str | None = None,
                  initial_bad: Sequence[BadRecordError] = (), progress: bool = False) -> CrabBatchIterator:
    """The pipeline over any :class:`ExampleSource` (see the module docstring)."""
    shard_index, shard_count = _shard(shard_options)
    if global_batch % shard_count:
        raise ValueError(f"global batch {global_batch} is not divisible by the {shard_count} data processes")
    index = build_plan_index(source, workers=workers if index_workers is None else index_workers,
                             cache_dir=cache_dir, progress=progress)
    infos = [x if isinstance(x, E.PlanInfo) else None for x in index]
    bad = list(initial_bad) + [x for x in index if isinstance(x, BadRecordError)]
    buckets, too_long = assign_buckets(infos, list(source.sources), seq_buckets, fallback_fbank_frames)
    bad += too_long
    if not any(b is not None for b in buckets):
        raise TooManyBadRecordsError(f"no usable record among {len(source)} (first problems: "
                                     f"{[str(e) for e in bad[:5]]})")
    decoder = SlotDecoder(source, tuple(buckets), int(global_batch), int(seed), bool(shuffle), shard_index,
                          shard_count, settings, collate_config)
    return CrabBatchIterator(decoder, num_epochs=num_epochs, workers=workers, read_threads=read_threads,
                             prefetch=prefetch, max_bad_fraction=max_bad_fraction,
                             initial_bad=bad, num_records=sum(b is not None for b in buckets))


def make_train_iterator(data_cfg, crab_cfg, *, global_batch: int, seed: int = 0, tokenizer=None,
                        shard_options=None, num_epochs: int | None = None, progress: bool = True) -> CrabBatchIterator:
    """The training iterator from the run config's ``data`` section (keys read with defaults).

    Keys: ``path`` (data root) or ``prepared`` (ArrayRecord folder of ``crab_jax.data.prepared.prepare``),
    ``tasks``, ``buckets`` (token lengths; default ``(seq_len,)``), ``frame_slots``,
    ``audio_slots``, ``fbank_frames`` (for audio-free data), ``worker_count`` (processes),
    ``read_threads`` / ``prefetch`` (batches decoded ahead per worker), ``seed``,
    ``shuffle``, ``max_bad_fraction``, ``tokenizer`` (folder), ``cache_dir``.
    """
    g = lambda k, d: data_cfg.get(k, d) if hasattr(data_cfg, "get") else getattr(data_cfg, k, d)
    tasks = tuple(g("tasks", ()))
    buckets = tuple(g("buckets", ()) or (g("seq_len", 512),))
    settings = E.settings_from(crab_cfg, g("path", ""), tasks, frame_slots=g("frame_slots", 10),
                               audio_slots=g("audio_slots", 10))
    cc = CollateConfig.from_crab(crab_cfg)
    common = dict(global_batch=global_batch, seq_buckets=buckets, seed=int(g("seed", seed)),
                  shuffle=bool(g("shuffle", True)), shard_options=shard_options, num_epochs=num_epochs,
                  workers=int(g("worker_count", 0)), read_threads=int(g("read_threads", 0)) or None,
                  prefetch=int(g("prefetch", 0)) or None, max_bad_fraction=float(g("max_bad_fraction", 0.01)),
                  fallback_fbank_frames=int(g("fbank_frames", 96)), progress=progress)
    prepared = g("prepared", "")
    if prepared:
        from crab_jax.data.prepared.array_record import PreparedSource

        source = PreparedSource(prepared, settings)
        return make_iterator(source, source.settings, cc, **common)
    if not g("path", ""):
        raise ValueError("config data.path: the data root is empty (or set data.prepared)")
    from crab_jax.families.crab.prompts import load_tokenizer

    tok = tokenizer if tokenizer is not None else load_tokenizer(_need(g("tokenizer", ""), "data.tokenizer"))
    check_token_ids(tok, crab_cfg)
    records, errors = read_records(g("path", ""), tasks, "train", seed=int(g("seed", seed)))
    cache = g("cache_dir", "") or os.path.join(os.path.expanduser("~"), ".cache", "crab_jax")
    return make_iterator(RawRecordSource(records, tok, settings), settings, cc, initial_bad=errors,
                         cache_dir=cache, **common)


def _need(value: str, key: str) -> str:
    if not value:
        raise ValueError(f"config {key} is empty: the tokenizer folder is needed to tokenise the records")
    return value


def check_token_ids(tokenizer, crab_cfg) -> None:
    """The tokenizer's ids of Crab's added tokens must be the model's (else embeddings mismatch)."""
    wrong = {t: (tokenizer.convert_tokens_to_ids(t), i) for t, i in crab_cfg.special_token_ids.items()
             if tokenizer.convert_tokens_to_ids(t) != i}
    if wrong:
        raise ValueError(f"tokenizer and model disagree on added token ids (tokenizer, model): {wrong}")


# ------------------------------------------------------------------------ global


def to_global(batch: Mapping[str, np.ndarray], mesh, spec_sharding) -> dict:
    """Local batches of every process -> global ``jax.Array``s (``make_array_from_process_local_data``).

    Args:
      batch: this process's arrays (leading dim = local batch).
      mesh: the ``jax.sharding.Mesh``.
      spec_sharding: a ``PartitionSpec`` for every key, a ``Sharding``, or a dict key -> either.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    def sharding_of(key):
        s = spec_sharding.get(key) if isinstance(spec_sharding, Mapping) else spec_sharding
        if s is None:
            raise KeyError(f"to_global: no sharding given for batch key {key!r}")
        return NamedSharding(mesh, s) if isinstance(s, PartitionSpec) else s

    return {k: jax.make_array_from_process_local_data(sharding_of(k), np.asarray(v)) for k, v in batch.items()}
