"""Random access to a run's examples: the :class:`ExampleSource` protocol and the raw-record
source (records decoded on the fly by the family's example builder).

The other source is :class:`crab_jax.data.prepared.array_record.PreparedSource` (examples
decoded once into ArrayRecord shards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Protocol, Sequence

from crab_jax.data.pipeline.buckets import PlanInfo
from crab_jax.data.pipeline.builder import ExampleBuilder


class ExampleSource(Protocol):
    """Examples by index, their plan info, and the builder that collates them.

    ``sources[i]`` names example ``i`` in messages (``"<annotation file>#<entry>"``).
    """

    sources: Sequence[str]
    builder: ExampleBuilder

    def __len__(self) -> int: ...

    def plan_info(self, index: int) -> PlanInfo: ...

    def example(self, index: int) -> Any: ...


@dataclasses.dataclass
class RawRecordSource:
    """Decodes records on the fly (``builder.build``)."""

    records: Sequence[Any]
    builder: ExampleBuilder

    @property
    def sources(self) -> list[str]:
        return [r.source for r in self.records]

    @property
    def tasks(self) -> list[str]:
        """The task of each record (bad records are counted per task)."""
        return [r.task for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def plan_info(self, index: int) -> PlanInfo:
        return self.builder.plan_info(self.records[index])

    def example(self, index: int) -> Any:
        return self.builder.build(self.records[index], index)

    def cache_key(self) -> str:
        """Changes with the records, the files they read (size, mtime) and the builder's key."""
        h = hashlib.sha256()
        h.update(self.builder.cache_key().encode())
        for r in self.records:
            h.update(repr(r).encode())
            for path in self.builder.record_files(r):
                try:
                    st = os.stat(path)
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(b"missing")
        return h.hexdigest()[:24]
