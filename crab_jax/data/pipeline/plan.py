"""The plan index: :class:`PlanInfo` (or why not) of every example, cached on disk.

Computing it decodes audio (for the fbank length), so a raw-record source's index is stored
as JSON under the cache folder, named by the source's ``cache_key()`` (the records, the
files they read, the builder's settings and vocabulary): a later run over unchanged data
reads it back. Sources without ``cache_key`` (prepared data: the index is stored with it)
are not cached.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.buckets import PlanInfo
from crab_jax.data.pipeline.workers import parallel_map


@dataclasses.dataclass(frozen=True)
class _PlanInfoFn:
    """Picklable ``index -> PlanInfo | BadRecordError`` for Grain workers."""

    source: object

    def __call__(self, index: int):
        try:
            return self.source.plan_info(int(index))
        except BadRecordError as e:
            return e


def _to_row(x: PlanInfo | BadRecordError) -> dict:
    return dataclasses.asdict(x) if isinstance(x, PlanInfo) else {"path": x.path, "reason": x.reason}


def _from_row(row: dict) -> PlanInfo | BadRecordError:
    return PlanInfo(**row) if "expanded_len" in row else BadRecordError(row["path"], row["reason"])


def build_plan_index(source, *, workers: int = 0, cache_dir: str | None = None,
                     progress: bool = False) -> list[PlanInfo | BadRecordError]:
    """PlanInfo (or the BadRecordError) of every example, cached as JSON under ``cache_dir``."""
    path = None
    if cache_dir and hasattr(source, "cache_key"):
        path = pathlib.Path(cache_dir) / f"plan_index-{source.cache_key()}.json"
        if path.is_file():
            return [_from_row(r) for r in json.loads(path.read_text())]
    out = parallel_map(_PlanInfoFn(source), len(source), workers, "plan index", progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([_to_row(x) for x in out]))
        tmp.replace(path)
    return out
