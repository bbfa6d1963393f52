"""One sample's media decoded side by side: video or image frames, the audio filterbank, the mask.

Each of them spends most of its time outside the GIL (PyAV's decoder and filter graph, PIL's
decoder and resize, NumPy's FFT and matmul), so where a core is spare a sample is ready sooner
(``benchmarks/media_side_by_side.py``: an S4 sample 1.2x; an AVE clip not at all, its video
decoder's own threads already keep both cores of a 2-core host busy). The threads are the process's own, made on first use: a data-loader worker
forked from a parent that had them gets its own.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any, Callable, Sequence

# One thread per kind of media a sample can hold (frames, audio, mask); more would not help one sample.
MEDIA_THREADS = 3

_lock = threading.Lock()
_pool: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():  # none yet, or inherited through fork
            _pool = (os.getpid(), concurrent.futures.ThreadPoolExecutor(MEDIA_THREADS, thread_name_prefix="media"))
        return _pool[1]


def run_side_by_side(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """The results of ``calls`` in their order, run concurrently (one call: run here).

    Every call finishes before this returns; the first exception (in ``calls`` order) is raised,
    e.g. the :class:`~crab_jax.data.errors.BadRecordError` naming the file that failed.
    """
    if len(calls) <= 1:
        return [call() for call in calls]
    futures = [_executor().submit(call) for call in calls]
    concurrent.futures.wait(futures)
    return [f.result() for f in futures]
