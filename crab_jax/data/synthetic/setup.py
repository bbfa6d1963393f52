"""The synthetic source of a run (``data.source = 'synthetic'``): where its dataset is, the
held-out records in training form, and the word tokenizer built from its texts.

On first use the dataset is generated into ``data.path`` (default
``<cache>/synthetic/v<F>-seed<S>-train<N>-test<M>-<tasks>``, ``F`` the generator's format
version, ``<cache>`` = ``data.cache_dir`` or ``~/.cache/crab_jax``; later runs with the same
parameters reuse it), and a word-level tokenizer is built from every prompt + target text of
its records (both splits, so no held-out answer word is ``<unk>``) into
``<cache>/tokenizers/synthetic-<hash>``, unless ``data.tokenizer`` names a folder.

The dataset holds one data root in two layouts (AV-UIE and AVUIE_2); a model family reads
the one it trains on with its own reader, passed in here as ``read_records`` (the family's
``read_records`` hook: ``(root, tasks, split, seed=) -> (records, bad-record errors)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Callable, Sequence

from crab_jax.config.sections import DataConfig
from crab_jax.data.records.record import Record, load_answer
from crab_jax.data.synthetic import scenes
from crab_jax.data.synthetic.generate import FORMAT_VERSION
from crab_jax.data.synthetic.records import heldout_target
from crab_jax.data.text.word_tokenizer import build_word_tokenizer

# A model family's ``(record, answer) -> (instruction, target)``: the texts a record trains on.
RecordTexts = Callable[[Record, str], tuple[str, str]]
# A model family's ``read_records(root, tasks, split, seed=) -> (records, bad-record errors)``.
RecordReader = Callable[..., tuple[list[Record], list]]

log = logging.getLogger("crab_jax.train")


def synthetic_tasks(data_cfg: DataConfig) -> tuple[str, ...]:
    """``data.tasks`` checked against the synthetic generator's tasks."""
    tasks = tuple(data_cfg.tasks)
    bad = [t for t in tasks if t not in scenes.ALL_TASKS]
    if bad or not tasks:
        raise ValueError(f"config data.tasks={list(tasks)}: data.source='synthetic' generates only "
                         f"{list(scenes.ALL_TASKS)}")
    return tasks


def synthetic_root(data_cfg: DataConfig) -> pathlib.Path:
    """``data.path``, or the default folder named after the generator's format version and the
    generation parameters (a dataset of an older format is never found there)."""
    if data_cfg.path:
        return pathlib.Path(os.path.expanduser(str(data_cfg.path)))
    s = data_cfg.synthetic
    name = (f"v{FORMAT_VERSION}-seed{int(s.seed)}-train{int(s.num_train)}-test{int(s.num_test)}-"
            f"{'_'.join(synthetic_tasks(data_cfg))}")
    return data_cfg.cache_root / "synthetic" / name


def as_training_record(record: Record) -> Record:
    """A test-split record in training form: the training prompt and the training target text.

    The tiny model learns the training prompts; held-out scoring asks the same questions about
    unseen clips. The target, first found of: the one the test record carries (its annotation
    row holds the training target field: AVUIE_2), the label text the dataset wrote for it
    (:func:`~crab_jax.data.synthetic.records.heldout_target`: AV-UIE AVQA / AVE), the test
    ground truth (AV-UIE S4 / ARIG: its text parses to the same fields).
    """
    answer = record.answer
    if answer is None:
        answer = heldout_target(record)
    if answer is None:
        answer = record.gt
    return dataclasses.replace(record, mode="train", answer=answer, answer_file=None, gt=None)


def heldout_records(root: str | os.PathLike, tasks: Sequence[str], read_records: RecordReader, *,
                    seed: int = 0) -> list[Record]:
    """The test split's records (``read_records``: the family's reader) in training form
    (:func:`as_training_record`), one per annotation entry: an entry its reader expands into
    several records (AV-UIE S4 test: one per frame) keeps its first, frame 0, the frame a
    training entry shows."""
    records, errors = read_records(root, tasks, "test", seed=seed)
    if errors:
        log.warning("held-out split: %d bad annotation entries skipped (first: %s)", len(errors), errors[0])
    seen, keep = set(), []
    for r in records:
        if r.source not in seen:
            seen.add(r.source)
            keep.append(r)
    return [as_training_record(r) for r in keep]


def corpus_texts(root: str | os.PathLike, tasks: Sequence[str], record_texts: RecordTexts,
                 read_records: RecordReader, *, seed: int = 0) -> list[str]:
    """Every instruction and target text (``record_texts(record, answer)``, the family's
    chat-templated pair) of the train and held-out records (``read_records``: the family's reader)."""
    records, errors = read_records(root, tasks, "train", seed=seed)
    if errors:
        raise ValueError(f"{root}: {len(errors)} bad training annotation entries (first: {errors[0]})")
    texts = []
    for r in list(records) + heldout_records(root, tasks, read_records, seed=seed):
        instruction, target = record_texts(r, load_answer(r, root))
        texts += [instruction, target]
    return texts


def write_tokenizer_once(texts: Sequence[str], folder: pathlib.Path, added_tokens: Sequence[str]) -> pathlib.Path:
    """Builds the word tokenizer of ``texts`` (``added_tokens``: the family's tokens, never
    vocabulary words) into ``folder`` unless it is there (atomic: temp folder + rename)."""
    if (folder / "tokenizer.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    build_word_tokenizer(texts, tmp, added_tokens)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race: its folder is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def synthetic_tokenizer_dir(root: pathlib.Path, tasks: Sequence[str], cache: pathlib.Path,
                            record_texts: RecordTexts, read_records: RecordReader) -> tuple[pathlib.Path, list[str]]:
    """Folder of the word tokenizer of this dataset's texts (named by their hash) and the texts."""
    texts = corpus_texts(root, tasks, record_texts, read_records)
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]
    return cache / "tokenizers" / f"synthetic-{digest}", texts
