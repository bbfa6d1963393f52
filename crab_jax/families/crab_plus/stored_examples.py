"""A Crab+ :class:`~crab_jax.families.crab_plus.examples.Example` as TFDS features (prepared
ArrayRecord data, ``python -m crab_jax.data.prepare``). Schema of one example::

    source        Text                     "<annotation file>#<entry>"
    index         int32 []                 record index at prepare time
    task_id       int32 []                 index into the stored settings' tasks
    input_ids     int32 [n]                ids with every placeholder expanded
    labels        int32 [n]                -100 outside the assistant turn
    visual_kind   Text                     "image" / "video" ("" for none)
    frames        uint8 [T, 3, H, W]       RGB at the frame size (bytes encoding)
    mel           float32 [mel_bins, F]    Whisper log-mel, valid frames only (bytes encoding)
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from crab_jax.families.crab_plus.examples import Example, ExampleSettings
from crab_jax.families.crab_plus.model import CrabPlusConfig

DATASET_NAME = "crab_plus_av_uie_v2"


def features(settings: ExampleSettings):
    """The ``tfds.features.FeaturesDict`` of the schema above."""
    import tensorflow_datasets as tfds  # optional: only preparing / reading ArrayRecord data needs it

    T = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "source": tfds.features.Text(),
        "index": T(shape=(), dtype=np.int32),
        "task_id": T(shape=(), dtype=np.int32),
        "input_ids": T(shape=(None,), dtype=np.int32),
        "labels": T(shape=(None,), dtype=np.int32),
        "visual_kind": tfds.features.Text(),
        "frames": T(shape=(None, 3, None, None), dtype=np.uint8, encoding="bytes"),
        "mel": T(shape=(settings.mel_bins, None), dtype=np.float32, encoding="bytes"),
    })


def to_features(ex: Example) -> dict:
    return {"source": ex.source, "index": np.int32(ex.index), "task_id": np.int32(ex.task_id),
            "input_ids": ex.input_ids.astype(np.int32), "labels": ex.labels.astype(np.int32),
            "visual_kind": ex.visual_kind, "frames": ex.frames, "mel": ex.mel}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def from_features(d: Mapping[str, Any], index: int) -> Example:
    """The stored example ``index`` (its position in the prepared data)."""
    return Example(source=_text(d["source"]), index=int(index), task_id=int(d["task_id"]),
                   input_ids=np.asarray(d["input_ids"], np.int32), labels=np.asarray(d["labels"], np.int32),
                   visual_kind=_text(d["visual_kind"]), frames=np.asarray(d["frames"], np.uint8),
                   mel=np.asarray(d["mel"], np.float32))


def stored_settings(settings: ExampleSettings, cfg: CrabPlusConfig) -> dict:
    """What changes the stored arrays (JSON-able); a reading run must agree on each."""
    p = settings.patch
    return json.loads(json.dumps({
        "tasks": list(settings.tasks), "frame_size": settings.frame_size, "mel_bins": settings.mel_bins,
        "patch": [p.patch_size, p.temporal_patch_size, p.merge_size],
        "token_ids": {k: int(v) for k, v in vars(cfg.tokens).items()}}))
