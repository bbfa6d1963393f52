"""Pre-decoded examples in ArrayRecord shards: a TFDS builder (TF-free) and its reader.

``tfds`` 4.9 writes and reads ``file_format="array_record"`` datasets without TensorFlow as
long as every feature is a numpy ``Tensor`` or ``Text``; so the builder below is an ordinary
``GeneratorBasedBuilder`` and the reader is ``tfds.builder_from_directory(...).as_data_source``.
What one example holds is the family's business: its
:class:`~crab_jax.data.pipeline.builder.ExampleBuilder` gives the features schema
(``features``), and converts to and from it (``to_features`` / ``from_features``).

Layout of a prepared folder::

    <out>/<builder.dataset_name>/1.0.0/*.array_record-*   the shards (+ TFDS metadata)
    <out>/prepared.json                                    settings, plan index, bad records

``prepared.json`` holds the builder's stored settings (checked against the reading run), the
per-example plan index (token length after expansion, fbank frames: bucketing never opens
an example) and the bad records skipped.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Iterable, Sequence

from etils import epath

from crab_jax.data.pipeline.buckets import PlanInfo
from crab_jax.data.pipeline.builder import ExampleBuilder

META_FILE = "prepared.json"
VERSION = "1.0.0"


def make_builder(data_dir: str | os.PathLike, builder: ExampleBuilder,
                 examples_fn: Callable[[], Iterable[tuple[int, Any]]] | None = None, split: str = "train"):
    """The TFDS builder; ``examples_fn() -> iterable of (key, example)`` is only needed to prepare."""
    import tensorflow_datasets as tfds  # optional: only preparing / reading ArrayRecord data needs it

    class PreparedExamples(tfds.core.GeneratorBasedBuilder):
        """Examples decoded by a family's example builder (see crab_jax.data.prepared.array_record)."""

        name = builder.dataset_name
        VERSION = tfds.core.Version(VERSION)

        # tfds finds a builder's source file through importlib_resources, which this
        # environment lacks (a tfds dependency not installed); the answer is this file.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return epath.Path(__file__)

        def _info(self):
            # Written in generation order: example i of the plan index is example i.
            return tfds.core.DatasetInfo(builder=self, features=builder.features(), disable_shuffling=True,
                                         description="examples pre-decoded by crab_jax.data.prepared.prepare")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples()}

        def _generate_examples(self):
            for key, ex in examples_fn():
                yield key, builder.to_features(ex)

    return PreparedExamples(data_dir=os.fspath(data_dir), file_format="array_record")


def write_meta(out_dir: str | os.PathLike, builder: ExampleBuilder, split: str,
               infos: Sequence[tuple[str, PlanInfo]], bad: Sequence[tuple[str, str]]) -> None:
    meta = {"split": split, "dataset": builder.dataset_name, "settings": dict(builder.stored_settings()),
            "plan_index": [[s, i.expanded_len, i.fbank_frames, i.media_slots, i.frames, i.audio_segments,
                            int(i.packable)] for s, i in infos],
            "bad_records": [{"path": p, "reason": r} for p, r in bad]}
    (pathlib.Path(out_dir) / META_FILE).write_text(json.dumps(meta))


def plan_info_of_row(row: Sequence) -> PlanInfo:
    """A stored plan-index row (see :func:`write_meta`) -> :class:`PlanInfo`."""
    sizes = [int(x) for x in row[1:6]]
    return PlanInfo(*sizes, packable=len(row) > 6 and bool(row[6]))


class PreparedSource:
    """:class:`~crab_jax.data.pipeline.record_source.ExampleSource` over a prepared folder."""

    def __init__(self, path: str | os.PathLike, builder: ExampleBuilder):
        self.path = pathlib.Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not a folder written by python -m crab_jax.data.prepare")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("dataset") != builder.dataset_name:
            raise ValueError(f"{meta_path}: holds {self.meta.get('dataset')!r} examples, this run's model family "
                             f"reads {builder.dataset_name!r}")
        stored, now = self.meta["settings"], dict(builder.stored_settings())
        wrong = {k: (stored.get(k), v) for k, v in now.items() if stored.get(k) != v}
        if wrong:
            raise ValueError(f"{meta_path}: prepared with other settings than this run (prepared, now): {wrong}")
        self.builder = builder
        self.sources = [row[0] for row in self.meta["plan_index"]]
        # rows: [source, expanded_len, fbank_frames(, media_slots(, frames, audio_segments, packable))]; older
        # folders lack the last ones (their records then train unpacked)
        self._infos = [plan_info_of_row(row) for row in self.meta["plan_index"]]
        self._ds = None

    def _data(self):
        if self._ds is None:  # opened lazily: once per worker process
            import tensorflow_datasets as tfds  # optional: only reading ArrayRecord data needs it

            self._ds = tfds.builder_from_directory(self._builder_dir()).as_data_source(split=self.meta["split"])
        return self._ds

    def _builder_dir(self) -> str:
        name = self.meta["dataset"]
        infos = sorted((self.path / name).glob("*/dataset_info.json"))
        if not infos:
            raise FileNotFoundError(f"{self.path}/{name}/<version>/dataset_info.json not found")
        return os.fspath(infos[-1].parent)

    def __len__(self) -> int:
        return len(self._infos)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_ds"] = None
        return d

    def plan_info(self, index: int) -> PlanInfo:
        return self._infos[index]

    def example(self, index: int):
        return self.builder.from_features(self._data()[index], int(index))
