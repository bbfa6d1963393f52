"""Pre-decoded AV-UIE examples in ArrayRecord shards: a TFDS builder (TF-free) and its reader.

``tfds`` 4.9 writes and reads ``file_format="array_record"`` datasets without TensorFlow as
long as every feature is a numpy ``Tensor`` (those with more than one unknown dimension
stored with ``encoding="bytes"``) or ``Text``; so the builder below is an ordinary
``GeneratorBasedBuilder`` and the reader is ``tfds.builder_from_directory(...).as_data_source``.

Features schema (one example = one decoded :class:`~crab_jax.families.crab.examples.Example`)::

    source        Text                        "<annotation file>#<entry>"
    index         int32 []                    record index at prepare time
    task_id       int32 []                    index into meta["tasks"]
    input_ids     int32 [n]                   raw ids (one per placeholder)
    labels        int32 [n]                   -100 on the prompt
    visual_ids    int32 [v]                   placeholder id of each visual block, in order
    visual_counts int32 [v]                   frames of each visual block
    frames        uint8 [t, H, W, 3]          RGB at the CLIP size (bytes encoding)
    fbank         float32 [a, F, 128]         normalised, F trimmed to whole BEATs patches (bytes)
    gt_mask       float32 [1, H, W]           (bytes)
    is_seg, is_avss  bool []

Next to the TFDS folder, ``crab_prepare.json`` holds the settings the examples were decoded
with (checked against the reading run), the per-record plan index (token length after
expansion, fbank frames: bucketing never opens a record), and the bad records skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Sequence

import numpy as np

from crab_jax.families.crab import examples as E

BUILDER_NAME = "crab_av_uie"
META_FILE = "crab_prepare.json"
# Settings that change the stored arrays; a reading run must agree on all of them.
STORED_SETTINGS = ("tasks", "image_size", "visual_queries", "audio_queries", "token_ids", "mask_token_ids",
                   "seg_enabled")


def features():
    import tensorflow_datasets as tfds

    T = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "source": tfds.features.Text(),
        "index": T(shape=(), dtype=np.int32),
        "task_id": T(shape=(), dtype=np.int32),
        "input_ids": T(shape=(None,), dtype=np.int32),
        "labels": T(shape=(None,), dtype=np.int32),
        "visual_ids": T(shape=(None,), dtype=np.int32),
        "visual_counts": T(shape=(None,), dtype=np.int32),
        "frames": T(shape=(None, None, None, 3), dtype=np.uint8, encoding="bytes"),
        "fbank": T(shape=(None, None, 128), dtype=np.float32, encoding="bytes"),
        "gt_mask": T(shape=(1, None, None), dtype=np.float32, encoding="bytes"),
        "is_seg": T(shape=(), dtype=np.bool_),
        "is_avss": T(shape=(), dtype=np.bool_),
    })


def to_features(ex: E.Example) -> dict:
    vis = np.asarray(ex.visual, np.int32).reshape(-1, 2)
    return {"source": ex.source, "index": np.int32(ex.index), "task_id": np.int32(ex.task_id),
            "input_ids": ex.input_ids.astype(np.int32), "labels": ex.labels.astype(np.int32),
            "visual_ids": vis[:, 0].copy(), "visual_counts": vis[:, 1].copy(), "frames": ex.frames,
            "fbank": ex.fbank, "gt_mask": ex.gt_mask, "is_seg": np.bool_(ex.is_seg), "is_avss": np.bool_(ex.is_avss)}


def from_features(d: dict) -> E.Example:
    src = d["source"]
    return E.Example(source=src.decode() if isinstance(src, bytes) else str(src), index=int(d["index"]),
                     task_id=int(d["task_id"]), input_ids=np.asarray(d["input_ids"], np.int32),
                     labels=np.asarray(d["labels"], np.int32),
                     visual=[(int(a), int(b)) for a, b in zip(d["visual_ids"], d["visual_counts"])],
                     frames=np.asarray(d["frames"], np.uint8), fbank=np.asarray(d["fbank"], np.float32),
                     gt_mask=np.asarray(d["gt_mask"], np.float32), is_seg=bool(d["is_seg"]),
                     is_avss=bool(d["is_avss"]))


def make_builder(data_dir: str | os.PathLike, examples_fn=None, split: str = "train"):
    """The TFDS builder; ``examples_fn() -> iterable of (key, Example)`` is only needed to prepare."""
    import tensorflow_datasets as tfds

    class CrabAvUie(tfds.core.GeneratorBasedBuilder):
        """AV-UIE records decoded by crab_jax (see crab_jax.data.prepared.array_record)."""

        name = BUILDER_NAME
        VERSION = tfds.core.Version("1.0.0")

        # tfds finds a builder's source file through importlib_resources, which this
        # environment lacks (a tfds dependency not installed); the answer is this file.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            from etils import epath

            return epath.Path(__file__)

        def _info(self):
            # Written in generation order: record i of the plan index is example i.
            return tfds.core.DatasetInfo(builder=self, features=features(), disable_shuffling=True,
                                         description="Crab AV-UIE, pre-decoded by crab_jax.data.prepared.prepare")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples()}

        def _generate_examples(self):
            for key, ex in examples_fn():
                yield key, to_features(ex)

    return CrabAvUie(data_dir=os.fspath(data_dir), file_format="array_record")


def write_meta(out_dir: str | os.PathLike, settings: E.ExampleSettings, split: str,
               infos: Sequence[tuple[str, E.PlanInfo]], bad: Sequence[tuple[str, str]]) -> None:
    meta = {"split": split, "settings": {k: _jsonable(getattr(settings, k)) for k in STORED_SETTINGS},
            "plan_index": [[s, i.expanded_len, i.fbank_frames] for s, i in infos],
            "bad_records": [{"path": p, "reason": r} for p, r in bad]}
    (pathlib.Path(out_dir) / META_FILE).write_text(json.dumps(meta))


def _jsonable(v):
    return json.loads(json.dumps(dict(v) if hasattr(v, "items") else list(v) if isinstance(v, tuple) else v))


class PreparedSource:
    """:class:`~crab_jax.data.pipeline.grain.ExampleSource` over a prepared folder."""

    def __init__(self, path: str | os.PathLike, settings: E.ExampleSettings):
        self.path = pathlib.Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not a folder written by python -m crab_jax.data.prepare")
        self.meta = json.loads(meta_path.read_text())
        stored = self.meta["settings"]
        wrong = {k: (stored.get(k), _jsonable(getattr(settings, k))) for k in STORED_SETTINGS
                 if stored.get(k) != _jsonable(getattr(settings, k))}
        if wrong:
            raise ValueError(f"{meta_path}: prepared with other settings than this run (prepared, now): {wrong}")
        self.settings = settings
        self.sources = [row[0] for row in self.meta["plan_index"]]
        self._infos = [E.PlanInfo(int(row[1]), int(row[2])) for row in self.meta["plan_index"]]
        self._ds = None

    def _data(self):
        if self._ds is None:  # opened lazily: once per worker process
            import tensorflow_datasets as tfds

            self._ds = tfds.builder_from_directory(self._builder_dir()).as_data_source(split=self.meta["split"])
        return self._ds

    def _builder_dir(self) -> str:
        infos = sorted((self.path / BUILDER_NAME).glob("*/dataset_info.json"))
        if not infos:
            raise FileNotFoundError(f"{self.path}/{BUILDER_NAME}/<version>/dataset_info.json not found")
        return os.fspath(infos[-1].parent)

    def __len__(self) -> int:
        return len(self._infos)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_ds"] = None
        return d

    def plan_info(self, index: int) -> E.PlanInfo:
        return self._infos[index]

    def example(self, index: int) -> E.Example:
        ex = from_features(self._data()[index])
        return dataclasses.replace(ex, index=int(index))
