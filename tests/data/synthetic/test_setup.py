"""The synthetic source's corpus and word tokenizer, with a model family's texts and tokens passed in."""

from __future__ import annotations

import json

from crab_jax.data.records.select import read_records
from crab_jax.data.synthetic.setup import (corpus_texts, heldout_records, synthetic_tokenizer_dir,
                                           write_tokenizer_once)

TASKS = ("ave", "s4")
ADDED = ("<video>", "<mask_0>")


def _texts(record, answer):
    """A family's ``record_texts`` stand-in: the task, a placeholder, and the target."""
    return f"<video> task {record.task}", answer + " <mask_0>"


def test_corpus_tokenizer_folder_and_added_tokens(dataset, tmp_path):
    train, errors = read_records(dataset, TASKS, "train")
    assert not errors
    heldout = heldout_records(dataset, TASKS)
    assert {r.mode for r in heldout} == {"train"} and all(r.answer for r in heldout)
    texts = corpus_texts(dataset, TASKS, _texts)
    assert len(texts) == 2 * (len(train) + len(heldout))
    assert texts[:2] == list(_texts(train[0], texts[1][: -len(" <mask_0>")]))

    folder, again = synthetic_tokenizer_dir(dataset, TASKS, tmp_path, _texts)
    assert again == texts and folder.parent == tmp_path / "tokenizers"
    assert synthetic_tokenizer_dir(dataset, TASKS, tmp_path, _texts)[0] == folder  # named by the texts' hash
    assert write_tokenizer_once(texts, folder, ADDED) == folder
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert write_tokenizer_once(texts, folder, ADDED) == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp  # built once
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert "task" in vocab and "s4" in vocab and not set(ADDED) & set(vocab)
