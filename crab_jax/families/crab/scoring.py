"""Crab's hooks for prediction files: what each ``preds.jsonl`` line carries, and its task scorers.

:func:`prediction_metadata` is the record half of one predictions line (``python -m
crab_jax.infer`` adds ``predict`` and the mask paths): the original's ``batch_metadata``
fields (``DataCollatorForUnifiedTestDataset``: ``instruction``, ``output``, the media paths,
``question_type`` / ``vid`` / ``qid`` for AVQA) plus ``task``, ``split``, ``source`` and
``reference``, the record fields the task's scorer reads (:mod:`crab_jax.families.crab.references`).
So crab_jax's lines are a superset of the original's ``infer_results.jsonl`` lines, and
both are scored by the same scorers (:data:`TASK_SCORERS`, see
:mod:`crab_jax.families.crab.task_scorers`).
"""

from __future__ import annotations

from typing import Any

from crab_jax.data.records.crab import AVQA_FORMAT_TASKS
from crab_jax.data.records.record import Record
from crab_jax.families.crab import references, task_scorers
from crab_jax.families.crab.prompts import crab_instruction, llama2_chat


def prediction_metadata(record: Record) -> dict[str, Any]:
    """The metadata of one predictions line for ``record`` (JSON-serialisable).

    Keys: ``task``, ``split``, ``source``, ``instruction`` (chat-templated, as the original
    stores it), ``output`` (the test GT string the original stores, ``record.gt``; None for
    quick-start records), ``video_path`` / ``image_path`` / ``audio_path`` / ``mask_path``
    where the record has them (relative to the data root), ``question_type`` / ``vid`` /
    ``qid`` (AVQA and the synthetic QA tasks), and ``reference``
    (:func:`crab_jax.families.crab.references.record_reference`).
    """
    out: dict[str, Any] = {"task": record.task, "split": record.split, "source": record.source,
                           "instruction": llama2_chat(crab_instruction(record)), "output": record.gt}
    for key in ("video_path", "image_path", "audio_path", "mask_path"):
        value = getattr(record, key)
        if value:
            out[key] = value
    if record.task in AVQA_FORMAT_TASKS:
        out.update(question_type=record.fields.get("type"), vid=record.fields.get("video_id"),
                   qid=record.fields.get("question_id"))
    out["reference"] = references.record_reference(record)
    return out


# Task -> scorer factory ``(ctx) -> TaskScorer`` (the family's ``task_scorers`` hook).
TASK_SCORERS = task_scorers.TASK_SCORERS
