"""A Crab :class:`~crab_jax.families.crab.examples.Example` as TFDS features (prepared ArrayRecord data).

``tfds`` 4.9 writes and reads ``file_format="array_record"`` datasets without TensorFlow as
long as every feature is a numpy ``Tensor`` (those with more than one unknown dimension
stored with ``encoding="bytes"``) or ``Text``. Schema of one example::

    source        Text                        "<annotation file>#<entry>"
    index         int32 []                    record index at prepare time
    task_id       int32 []                    index into the stored settings' tasks
    input_ids     int32 [n]                   raw ids (one per placeholder)
    labels        int32 [n]                   -100 on the prompt
    visual_ids    int32 [v]                   placeholder id of each visual block, in order
    visual_counts int32 [v]                   frames of each visual block
    frames        uint8 [t, H, W, 3]          RGB at the CLIP size (bytes encoding)
    fbank         float32 [a, F, 128]         normalised, F trimmed to whole BEATs patches (bytes)
    gt_mask       float32 [1, H, W]           (bytes)
    is_seg, is_avss  bool []
    seg_frame     int32 []                    row of ``frames`` the seg module reads
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from crab_jax.families.crab.examples import MEL_BINS, Example, ExampleSettings

DATASET_NAME = "crab_av_uie"
# Settings that change the stored arrays; a reading run must agree on all of them.
STORED_SETTINGS = ("tasks", "image_size", "visual_queries", "audio_queries", "token_ids", "mask_token_ids",
                   "seg_enabled")


def features():
    """The ``tfds.features.FeaturesDict`` of the schema above."""
    import tensorflow_datasets as tfds  # optional: only preparing / reading ArrayRecord data needs it

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
        "fbank": T(shape=(None, None, MEL_BINS), dtype=np.float32, encoding="bytes"),
        "gt_mask": T(shape=(1, None, None), dtype=np.float32, encoding="bytes"),
        "is_seg": T(shape=(), dtype=np.bool_),
        "is_avss": T(shape=(), dtype=np.bool_),
        "seg_frame": T(shape=(), dtype=np.int32),
    })


def to_features(ex: Example) -> dict:
    vis = np.asarray(ex.visual, np.int32).reshape(-1, 2)
    return {"source": ex.source, "index": np.int32(ex.index), "task_id": np.int32(ex.task_id),
            "input_ids": ex.input_ids.astype(np.int32), "labels": ex.labels.astype(np.int32),
            "visual_ids": vis[:, 0].copy(), "visual_counts": vis[:, 1].copy(), "frames": ex.frames,
            "fbank": ex.fbank, "gt_mask": ex.gt_mask, "is_seg": np.bool_(ex.is_seg), "is_avss": np.bool_(ex.is_avss),
            "seg_frame": np.int32(ex.seg_frame)}


def from_features(d: Mapping[str, Any], index: int) -> Example:
    """The stored example ``index`` (its position in the prepared data)."""
    src = d["source"]
    return Example(source=src.decode() if isinstance(src, bytes) else str(src), index=int(index),
                   task_id=int(d["task_id"]), input_ids=np.asarray(d["input_ids"], np.int32),
                   labels=np.asarray(d["labels"], np.int32),
                   visual=[(int(a), int(b)) for a, b in zip(d["visual_ids"], d["visual_counts"])],
                   frames=np.asarray(d["frames"], np.uint8), fbank=np.asarray(d["fbank"], np.float32),
                   gt_mask=np.asarray(d["gt_mask"], np.float32), is_seg=bool(d["is_seg"]),
                   is_avss=bool(d["is_avss"]), seg_frame=int(d["seg_frame"]))


def stored_settings(settings: ExampleSettings) -> dict:
    """The :data:`STORED_SETTINGS` of ``settings``, JSON-able (tuples as lists)."""
    return {k: _jsonable(getattr(settings, k)) for k in STORED_SETTINGS}


def _jsonable(v):
    return json.loads(json.dumps(dict(v) if hasattr(v, "items") else list(v) if isinstance(v, tuple) else v))
