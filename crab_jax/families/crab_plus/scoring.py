"""Crab+'s hooks for prediction files: what each ``preds.jsonl`` line carries, its task scorers
and the run summary's headline metrics.

:func:`prediction_metadata` is the record half of one predictions line (``python -m
crab_jax.infer`` adds ``predict``; the SAM2 stage adds its ``sam2_*`` fields and
``pred_mask_path``): the original's test metadata (``OmniTestDataset``: ``output``, the GT string
it stores, and the annotation fields it copies, ``type`` / ``split`` / ``fid`` / ``image_path``
...) under the annotation's own names, plus ``task``, ``split``, ``source``, the media paths and
the other record fields the scorers read. So the original's ``inference_{task}.jsonl`` lines and
crab_jax's are scored by the same scorers (:data:`TASK_SCORERS`, see
:mod:`crab_jax.families.crab_plus.task_scorers`).
"""

from __future__ import annotations

from typing import Any

from crab_jax.data.records.record import Record
from crab_jax.families.crab_plus import task_scorers

MEDIA_KEYS = ("video_path", "image_path", "audio_path", "mask_path")


def prediction_metadata(record: Record) -> dict[str, Any]:
    """The metadata of one predictions line for ``record`` (JSON-serialisable).

    Keys: the record's ``fields`` (annotation names: ``type``, ``answer``, ``multi_choice``,
    ``event``, ``start_time``, ``top_left``, ``fid``, ``vid``, ``uid``, ``correct_video`` ...),
    then ``task``, ``split``, ``source``, ``output`` (the test GT string the original stores,
    ``record.gt``; for a training record of a held-out evaluation, its target text),
    ``video_path`` / ``image_path`` / ``audio_path`` / ``mask_path`` where the record has them
    (relative to the data root; ``video2_path`` / ``audio2_path`` for a2v / v2a's second clip)
    and ``frame_idx`` for the image tasks.
    """
    out: dict[str, Any] = dict(record.fields)
    out.update(task=record.task, split=record.split, source=record.source,
               output=record.gt if record.gt is not None else record.answer)
    for key in MEDIA_KEYS:
        value = getattr(record, key)
        if value:
            out[key] = value
    if len(record.videos) > 1:
        out["video2_path"] = record.videos[1]
    if len(record.audios) > 1:
        out["audio2_path"] = record.audios[1]
    if record.frame_idx is not None:
        out["frame_idx"] = record.frame_idx
    return out


# Task -> scorer factory ``(ctx) -> TaskScorer`` (the family's ``task_scorers`` hook).
TASK_SCORERS = task_scorers.TASK_SCORERS
# Task -> headline metric keys (the family's ``headline`` hook).
HEADLINE = task_scorers.HEADLINE
