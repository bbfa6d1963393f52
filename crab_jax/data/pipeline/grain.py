"""The training input pipeline: examples -> planned static-shape batches, decoded by Grain workers.

Stages (each process runs the same ones)::

    ExampleSource (records + the family's ExampleBuilder, or prepared ArrayRecord shards)
      -> plan index: PlanInfo per example (token length, fbank frames; cached on disk,
         :mod:`~crab_jax.data.pipeline.plan`) -> Bucket per example (too long: bad record, counted)
      -> plan_epoch(seed, epoch): global batches, fillers complete each bucket's last batch
         (:mod:`~crab_jax.data.pipeline.buckets`)
      -> this process's slice of every global batch (ShardByJaxProcess or given ShardOptions)
      -> Grain MapDataset over slots: decode in worker processes, batch with the builder's
         collation; a record that fails to decode is replaced in its batch by a filler and
         counted (:mod:`~crab_jax.data.pipeline.decoder`)
      -> main process: strips the per-batch report, updates stats(), logs every bad record
         once, stops the run when the bad records pass data.max_bad_fraction
         (:mod:`~crab_jax.data.pipeline.iterator`, :mod:`~crab_jax.data.pipeline.bad_records`)
"""

from __future__ import annotations

from typing import Sequence

import grain

from crab_jax.config.sections import DataConfig, PackingConfig
from crab_jax.data.errors import BadFileError, BadRecordError
from crab_jax.data.pipeline.buckets import PlanInfo, assign_buckets, plan_items
from crab_jax.data.pipeline.decoder import SlotDecoder
from crab_jax.data.pipeline.iterator import BatchIterator, TooManyBadRecordsError
from crab_jax.data.pipeline.plan import build_plan_index
from crab_jax.data.pipeline.record_source import ExampleSource


def _shard(shard_options) -> tuple[int, int]:
    opts = shard_options if shard_options is not None else grain.sharding.ShardByJaxProcess(drop_remainder=False)
    return int(opts.shard_index), int(opts.shard_count)


def make_iterator(source: ExampleSource, *, global_batch: int, seq_buckets: Sequence[int], seed: int,
                  max_bad_fraction: float, fallback_fbank_frames: int, shuffle: bool = True, shard_options=None,
                  num_epochs: int | None = None, workers: int = 0, index_workers: int | None = None,
                  read_threads: int | None = None, prefetch: int | None = None, cache_dir: str | None = None,
                  initial_bad: Sequence[BadRecordError] = (), skipped_files: Sequence[BadFileError] = (),
                  packing: PackingConfig | None = None, progress: bool = False) -> BatchIterator:
    """The pipeline over any :class:`ExampleSource` (see the module docstring).

    Args:
      global_batch: samples per step over all processes (divisible by the shard count).
      seq_buckets: token-length buckets (``data.seq_buckets``).
      fallback_fbank_frames: fbank frames of the one bucket when no example has audio.
      workers: Grain decoding processes (0: threads of this process); ``index_workers``
        those of the plan index (default ``workers``).
      read_threads, prefetch: decoding threads and batches decoded ahead (None: automatic).
      cache_dir: where the plan index is cached (None: not cached).
      initial_bad: bad records found before the pipeline (annotation errors), counted.
      skipped_files: annotation files the run goes on without (``data.skip_bad_files``),
        listed in ``stats()`` and not counted as records.
      packing: pack the builder's packable records several to a row (None: one per row;
        :mod:`~crab_jax.data.pipeline.buckets`); the builder then needs ``collate_packed``.
    Bad records are counted per task: the source's ``tasks`` (one per example) where it has
    them (raw records), else their annotation file.
    """
    if packing is not None and not hasattr(source.builder, "collate_packed"):
        raise ValueError(f"config data.packing.seq_len={packing.seq_len}: {type(source.builder).__name__} cannot pack "
                         "samples into rows (no collate_packed); set data.packing.seq_len=0")
    shard_index, shard_count = _shard(shard_options)
    if global_batch % shard_count:
        raise ValueError(f"global batch {global_batch} is not divisible by the {shard_count} data processes")
    index = build_plan_index(source, workers=workers if index_workers is None else index_workers,
                             cache_dir=cache_dir, progress=progress)
    infos = [x if isinstance(x, PlanInfo) else None for x in index]
    names = list(source.sources)
    tasks = getattr(source, "tasks", None)
    tasks = list(tasks) if tasks is not None else None
    task_of = dict(zip(names, tasks)) if tasks is not None else {}
    bad = list(initial_bad) + [x.with_task(tasks[i]) if tasks is not None else x
                               for i, x in enumerate(index) if isinstance(x, BadRecordError)]
    buckets, too_long = assign_buckets(infos, names, seq_buckets, fallback_fbank_frames)
    bad += [e.with_task(task_of[e.path]) if e.path in task_of else e for e in too_long]
    if not any(b is not None for b in buckets):
        raise TooManyBadRecordsError(f"no usable record among {len(source)} (first problems: "
                                     f"{[str(e) for e in bad[:5]]})")
    items = plan_items(buckets, infos, int(global_batch), int(seed), packing)
    decoder = SlotDecoder(source, tuple(buckets), tuple(items), int(global_batch), int(seed), bool(shuffle), shard_index,
                          shard_count)
    return BatchIterator(decoder, num_epochs=num_epochs, workers=workers, read_threads=read_threads,
                         prefetch=prefetch, max_bad_fraction=max_bad_fraction,
                         initial_bad=bad, num_records=sum(b is not None for b in buckets),
                         skipped_files=skipped_files, record_tasks=tasks)


def packing_of(data: DataConfig) -> PackingConfig | None:
    """The run's ``data.packing`` checked (None when its ``seq_len`` is 0: no packing)."""
    p = data.packing
    if int(p.seq_len) <= 0:
        return None
    for key in ("samples", "frame_slots", "audio_slots"):
        value = int(getattr(p, key))
        if value < (1 if key == "samples" else 0):
            raise ValueError(f"config data.packing.{key}={value}: expected "
                             + ("at least 1 sample per row" if key == "samples" else "0 (sized from the records) or more"))
    return p


def make_train_iterator(data: DataConfig, source: ExampleSource, *, global_batch: int,
                        initial_bad: Sequence[BadRecordError] = (), skipped_files: Sequence[BadFileError] = (),
                        shard_options=None,
                        num_epochs: int | None = None, progress: bool = False) -> BatchIterator:
    """The training pipeline over ``source`` as the run's ``data`` section sets it up
    (buckets, packing, shuffle seed, workers, threads, prefetch, bad fraction, plan-index cache)."""
    return make_iterator(source, global_batch=global_batch, seq_buckets=data.seq_buckets, seed=int(data.seed),
                         shuffle=bool(data.shuffle), shard_options=shard_options, num_epochs=num_epochs,
                         workers=int(data.worker_count), read_threads=int(data.read_threads) or None,
                         prefetch=int(data.prefetch) or None, max_bad_fraction=float(data.max_bad_fraction),
                         fallback_fbank_frames=int(data.fbank_frames), cache_dir=str(data.cache_root),
                         initial_bad=initial_bad, skipped_files=skipped_files, packing=packing_of(data),
                         progress=progress)

