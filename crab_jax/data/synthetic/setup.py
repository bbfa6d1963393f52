"""The synthetic source of a run (``data.source = 'synthetic'``): where its dataset is, the
held-out records in training form, and the word tokenizer built from its texts.

On first use the dataset is generated into ``data.path`` (default
``<cache>/synthetic/seed<S>-train<N>-test<M>-<tasks>``, ``<cache>`` = ``data.cache_dir`` or
``~/.cache/crab_jax``; later runs with the same parameters reuse it), and a word-level
tokenizer is built from every prompt + target text of its records (both splits, so no
held-out answer word is ``<unk>``) into ``<cache>/tokenizers/synthetic-<hash>``, unless
``data.tokenizer`` names a folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import tempfile
from typing import Sequence

log = logging.getLogger("crab_jax.train")


def cache_dir(data_cfg) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(str(data_cfg.cache_dir or "~/.cache/crab_jax")))


def synthetic_tasks(data_cfg) -> tuple[str, ...]:
    """``data.tasks`` checked against the synthetic generator's tasks."""
    from crab_jax.data.synthetic import generate as S

    tasks = tuple(data_cfg.tasks)
    bad = [t for t in tasks if t not in S.TASKS]
    if bad or not tasks:
        raise ValueError(f"config data.tasks={list(tasks)}: data.source='synthetic' generates only {list(S.TASKS)}")
    return tasks


def synthetic_root(data_cfg) -> pathlib.Path:
    """``data.path``, or the default folder named after the generation parameters."""
    if data_cfg.path:
        return pathlib.Path(os.path.expanduser(str(data_cfg.path)))
    s = data_cfg.synthetic
    name = f"seed{int(s.seed)}-train{int(s.num_train)}-test{int(s.num_test)}-{'_'.join(synthetic_tasks(data_cfg))}"
    return cache_dir(data_cfg) / "synthetic" / name


def as_training_record(record):
    """A test-split record in training form: the training prompt and the training target text.

    The tiny model learns the training prompts; held-out scoring asks the same questions about
    unseen clips. Targets: AVQA / AVE get their ``converted_label`` text (what training reads),
    S4 / ARIG keep the test ground truth (its text parses to the same fields).
    """
    from crab_jax.data.synthetic import generate as S

    f = record.fields
    if record.task == "avqa":
        answer = S.avqa_label_text(record.gt)
    elif record.task == "ave":
        answer = S.ave_label_text(f["event"], f["start_time"], f["end_time"])
    else:
        answer = record.gt
    return dataclasses.replace(record, mode="train", answer=answer, answer_file=None, gt=None)


def heldout_records(root: str | os.PathLike, tasks: Sequence[str], *, seed: int = 0) -> list:
    """The test split's records in training form (:func:`as_training_record`); S4 / MS3 keep
    frame 0 only, the frame their training records show."""
    from crab_jax.data.pipeline.grain import read_records

    records, errors = read_records(root, tasks, "test", seed=seed)
    if errors:
        log.warning("held-out split: %d bad annotation entries skipped (first: %s)", len(errors), errors[0])
    keep = [r for r in records if r.task not in ("s4", "ms3") or r.frame_idx == 0]
    return [as_training_record(r) for r in keep]


def corpus_texts(root: str | os.PathLike, tasks: Sequence[str], *, seed: int = 0) -> list[str]:
    """Every chat-templated instruction and target text of the train and held-out records."""
    from crab_jax.data.pipeline.grain import read_records
    from crab_jax.families.crab.prompts import build_crab_text
    from crab_jax.data.records.readers import load_answer

    records, errors = read_records(root, tasks, "train", seed=seed)
    if errors:
        raise ValueError(f"{root}: {len(errors)} bad training annotation entries (first: {errors[0]})")
    texts = []
    for r in list(records) + heldout_records(root, tasks, seed=seed):
        instruction, target = build_crab_text(r, load_answer(r, root))
        texts += [instruction, target]
    return texts


def write_tokenizer_once(texts: Sequence[str], folder: pathlib.Path) -> pathlib.Path:
    """Builds the word tokenizer into ``folder`` unless it is there (atomic: temp folder + rename)."""
    from crab_jax.data.text.word_tokenizer import build_word_tokenizer

    if (folder / "tokenizer.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    build_word_tokenizer(texts, tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race: its folder is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def synthetic_tokenizer_dir(root: pathlib.Path, tasks: Sequence[str], cache: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    """Folder of the word tokenizer of this dataset's texts (named by their hash) and the texts."""
    texts = corpus_texts(root, tasks)
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]
    return cache / "tokenizers" / f"synthetic-{digest}", texts
