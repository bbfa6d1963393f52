"""The records of a run's task list: Crab fine-tuning and pretraining sets read together."""

from __future__ import annotations

import os
from typing import Sequence

from crab_jax.data.errors import BadRecordError, as_file_error
from crab_jax.data.records.crab import READ_TASKS, read_crab_task
from crab_jax.data.records.pretrain import PRETRAIN_TASKS, read_pretrain_task
from crab_jax.data.records.record import CrabLayout, Record


def read_records(data_root: str | os.PathLike, tasks: Sequence[str], mode: str = "train", *,
                 layout: CrabLayout = CrabLayout(), seed: int = 0) -> tuple[list[Record], list[BadRecordError]]:
    """Every record of ``tasks`` (Crab fine-tuning or pretraining sets), bad entries collected.

    A whole annotation file that is missing or unreadable is one collected
    :class:`~crab_jax.data.errors.BadFileError` (the caller decides whether the run may go on
    without it); every collected error names its task (``.task``). An unknown task name
    raises ValueError.
    """
    records, errors = [], []
    for task in tasks:
        try:
            if task in READ_TASKS:
                res = read_crab_task(task, mode, data_root, layout=layout, seed=seed, strict=False)
            elif task in PRETRAIN_TASKS:
                res = read_pretrain_task(task, data_root, mode=mode, layout=layout, strict=False)
            else:
                raise ValueError(f"data.tasks: unknown task {task!r}; known: {READ_TASKS + PRETRAIN_TASKS}")
        except BadRecordError as e:  # a whole annotation file missing / unreadable
            errors.append(as_file_error(e, task))
            continue
        records += res.records
        errors += [e.with_task(task) for e in res.errors]
    return records, errors
