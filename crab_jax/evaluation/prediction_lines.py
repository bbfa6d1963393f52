"""The lines of ``preds.jsonl`` (the original's ``infer_results.jsonl`` format plus crab_jax's
fields) and a writer that keeps them in input order while flushing as it goes.

A line is the family's record metadata (``family.prediction_metadata``) plus, for a
generated sample: ``predict`` (the decoded text, as the original writes it),
``generated_ids``, ``finished``, ``mask_tokens`` and, where a mask was produced, the mask
file paths (``pred_mask_path``, ``pred_logits_path``, ``overlay_path``); for an item that
could not be decoded: ``"error": "<path>: <reason>"`` and no ``predict``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from crab_jax.data.errors import BadRecordError
from crab_jax.families.base import Family, SamplePrediction

MEDIA_FIELDS = ("video_path", "image_path", "audio_path", "mask_path")


def record_metadata(family: Family, record) -> dict[str, Any]:
    """``family.prediction_metadata(record)``, or the task, source and media paths without that hook."""
    if family.prediction_metadata is not None:
        return dict(family.prediction_metadata(record))
    out: dict[str, Any] = {"task": record.task, "source": record.source}
    out.update({k: getattr(record, k) for k in MEDIA_FIELDS if getattr(record, k, None)})
    return out


def prediction_line(metadata: Mapping[str, Any], pred: SamplePrediction,
                    mask_paths: Mapping[str, str] | None = None) -> dict[str, Any]:
    line = dict(metadata)
    line.update(predict=pred.text, generated_ids=[int(t) for t in pred.generated_ids], finished=bool(pred.finished),
                mask_tokens=int(pred.mask_tokens))
    line.update(mask_paths or {})
    return line


def error_line(metadata: Mapping[str, Any], error: BadRecordError) -> dict[str, Any]:
    line = dict(metadata)
    line["error"] = f"{error.path}: {error.reason}"
    return line


class OrderedJsonLines:
    """Writes line ``i`` once lines ``0 .. i-1`` are written (samples finish out of order when
    batched by length), one flush per line: an interrupted run keeps every line it finished
    in order. Opening truncates the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        self._next = 0
        self._waiting: dict[int, dict] = {}

    def add(self, index: int, line: Mapping[str, Any]) -> None:
        if index < self._next or index in self._waiting:
            raise ValueError(f"{self.path}: line {index} written twice")
        self._waiting[index] = dict(line)
        while self._next in self._waiting:
            self._file.write(json.dumps(self._waiting.pop(self._next)) + "\n")
            self._file.flush()
            self._next += 1

    def close(self) -> None:
        if self._waiting:
            missing = self._next
            self._file.close()
            raise ValueError(f"{self.path}: lines {sorted(self._waiting)} wait for line {missing}, never given")
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:  # keep what was written; drop lines that wait for a missing one
            self._file.close()
