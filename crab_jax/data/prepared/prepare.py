"""``python -m crab_jax.data.prepare``: pre-decode a run's records into ArrayRecord shards (TFDS, no TF).

Decodes every record of ``data.tasks`` once with the model family's example builder (for
Crab: frames, fbank, masks, token ids; see :mod:`crab_jax.data.prepared.array_record` for
the layout), so that training reads arrays instead of decoding video and audio. Train on
the result with ``data.prepared=<out>``. Bad records are skipped and listed in
``<out>/prepared.json`` (and printed).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import grain
from tqdm import tqdm

from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.builder import ExampleBuilder
from crab_jax.data.pipeline.workers import with_workers
from crab_jax.data.prepared.array_record import make_builder, write_meta


@dataclasses.dataclass(frozen=True)
class _BuildFn:
    """Picklable ``index -> example | BadRecordError`` for Grain workers."""

    records: Sequence
    builder: ExampleBuilder

    def __call__(self, i: int):
        try:
            return self.builder.build(self.records[int(i)], int(i))
        except BadRecordError as e:
            return e


def decoded(records, builder: ExampleBuilder, workers: int = 0, progress: bool = True):
    """Yields ``(index, example | BadRecordError)`` in record order (Grain workers if > 0)."""
    ds = grain.MapDataset.range(len(records)).map(_BuildFn(records, builder)).to_iter_dataset(
        grain.ReadOptions(num_threads=1 if workers else 4, prefetch_buffer_size=2 if workers else 8))
    for i, x in enumerate(tqdm(with_workers(ds, workers), total=len(records), desc="decoding records",
                               unit="rec", disable=not progress)):
        yield i, x


def prepare(records, builder: ExampleBuilder, out_dir: str | os.PathLike, *, split: str = "train",
            workers: int = 0, progress: bool = True, initial_bad: Sequence[BadRecordError] = ()) -> dict:
    """Writes the shards + ``prepared.json`` under ``out_dir``; returns ``{written, bad}``."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos, bad = [], [(e.path, e.reason) for e in initial_bad]

    def examples():
        for i, x in decoded(records, builder, workers, progress):
            if isinstance(x, BadRecordError):
                bad.append((x.path, x.reason))
                continue
            infos.append((records[i].source, builder.example_plan_info(x)))
            yield len(infos) - 1, x

    make_builder(out, builder, examples, split).download_and_prepare()
    write_meta(out, builder, split, infos, bad)
    return {"written": len(infos), "bad": bad}
