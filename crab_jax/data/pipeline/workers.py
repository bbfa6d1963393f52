"""Grain worker processes: started for a dataset, or a parallel map over record indices."""

from __future__ import annotations

from typing import Callable

import grain
from absl import flags
from tqdm import tqdm

MIN_RECORDS_PER_WORKER = 64   # below this many records per worker process, map in this process


def absl_flags_ready() -> None:
    """Grain's worker processes read absl flags; outside an absl app they were never parsed."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def with_workers(ds, workers: int):
    """``ds.mp_prefetch`` with ``workers`` processes (0: decode in this process)."""
    if workers <= 0:
        return ds
    absl_flags_ready()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


def parallel_map(fn: Callable[[int], object], n: int, workers: int, desc: str, progress: bool) -> list:
    """``[fn(0), ..., fn(n - 1)]`` (``fn`` picklable), in ``workers`` processes when ``n`` is large."""
    # Worker processes take seconds to start: only worth it for a long list.
    workers = workers if n >= MIN_RECORDS_PER_WORKER * max(workers, 1) else 0
    ds = with_workers(grain.MapDataset.range(n).map(fn).to_iter_dataset(), workers)
    return list(tqdm(ds, total=n, desc=desc, unit="rec", disable=not progress))
