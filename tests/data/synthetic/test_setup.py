"""The synthetic source's held-out records, corpus and word tokenizer, with a model family's reader,
texts and tokens passed in (Crab's and Crab+'s readers, and stand-ins)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from crab_jax.config.schema import get_config
from crab_jax.config.sections import RunConfig
from crab_jax.data.records.crab_plus import CRAB_PLUS_TARGET, read_crab_plus_records
from crab_jax.data.records.record import Record
from crab_jax.data.records.select import read_records
from crab_jax.data.synthetic import avuie2, scenes
from crab_jax.data.synthetic import generate as gen
from crab_jax.data.synthetic.records import LAYOUT
from crab_jax.data.synthetic.setup import (corpus_texts, heldout_records, synthetic_root, synthetic_tokenizer_dir,
                                           write_tokenizer_once)

TASKS = ("ave", "s4")
ADDED = ("<video>", "<mask_0>")


def _texts(record, answer):
    """A family's ``record_texts`` stand-in: the task, a placeholder, and the target."""
    return f"<video> task {record.task}", answer + " <mask_0>"


def test_corpus_tokenizer_folder_and_added_tokens(dataset, tmp_path):
    train, errors = read_records(dataset, TASKS, "train")
    assert not errors
    heldout = heldout_records(dataset, TASKS, read_records)
    assert {r.mode for r in heldout} == {"train"} and all(r.answer for r in heldout)
    texts = corpus_texts(dataset, TASKS, _texts, read_records)
    assert len(texts) == 2 * (len(train) + len(heldout))
    assert texts[:2] == list(_texts(train[0], texts[1][: -len(" <mask_0>")]))

    folder, again = synthetic_tokenizer_dir(dataset, TASKS, tmp_path, _texts, read_records)
    assert again == texts and folder.parent == tmp_path / "tokenizers"
    assert synthetic_tokenizer_dir(dataset, TASKS, tmp_path, _texts, read_records)[0] == folder  # named by the texts' hash
    assert write_tokenizer_once(texts, folder, ADDED) == folder
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert write_tokenizer_once(texts, folder, ADDED) == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp  # built once
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert "task" in vocab and "s4" in vocab and not set(ADDED) & set(vocab)


def test_heldout_calls_the_reader_passed_in_and_train_forms_generically(tmp_path):
    """A stand-in reader (no family): one record per annotation entry, the carried target first,
    else the test GT."""
    calls = []

    def reader(root, tasks, split, seed=0):
        calls.append((root, tuple(tasks), split, seed))
        rec = Record(family="any", task="t", mode="test", split="test", source="t/test.json#0", gt="g", frame_idx=0)
        return [rec, dataclasses.replace(rec, frame_idx=1),
                dataclasses.replace(rec, source="t/test.json#1", answer="carried", gt="g1")], []

    out = heldout_records(tmp_path, ("t",), reader, seed=7)
    assert calls == [(tmp_path, ("t",), "test", 7)]
    assert [(r.source, r.frame_idx, r.mode, r.answer, r.gt) for r in out] == [
        ("t/test.json#0", 0, "train", "g", None), ("t/test.json#1", 0, "train", "carried", None)]


def test_crab_heldout_keeps_frame_0_and_trains_on_the_written_labels(dataset):
    """AV-UIE layout (Crab's reader): S4 one record per clip (frame 0); AVQA / AVE targets are the
    converted_label texts the generator wrote for the test split; ARIG keeps its test GT."""
    heldout = heldout_records(dataset, scenes.TASKS, read_records)
    by_task = {t: [r for r in heldout if r.task == t] for t in scenes.TASKS}
    assert len(by_task["s4"]) == len(gen.load_records(dataset, "s4", "test"))
    assert {r.frame_idx for r in by_task["s4"]} == {0}
    for r in by_task["avqa"]:
        assert r.answer == (dataset / LAYOUT["avqa"]["labels"] / f"{r.fields['question_id']}.txt").read_text()
    for r in by_task["ave"]:
        vid = pathlib.PurePosixPath(r.video_path).stem
        assert r.answer == (dataset / LAYOUT["ave"]["labels"] / f"{vid}.txt").read_text()
    arig_test, _ = read_records(dataset, ("arig",), "test")
    assert [r.answer for r in by_task["arig"]] == [r.gt for r in arig_test]


def test_crab_plus_heldout_trains_on_the_targets_of_the_test_rows(dataset_all_tasks):
    """AVUIE_2 layout (Crab+'s reader): every test row, in training form with its own target field."""
    root = dataset_all_tasks
    heldout = heldout_records(root, scenes.AVUIE2_TASKS, read_crab_plus_records)
    rows = {t: json.loads((root / avuie2.annotation_file(t, "test")).read_text()) for t in scenes.AVUIE2_TASKS}
    assert len(heldout) == sum(len(v) for v in rows.values())
    for r in heldout:
        file, _, index = r.source.partition("#")
        assert file == avuie2.annotation_file(r.task, "test")
        assert r.mode == "train" and r.gt is None
        assert r.answer == rows[r.task][int(index)][CRAB_PLUS_TARGET[r.task]]
    texts = corpus_texts(root, scenes.AVUIE2_TASKS, _texts, read_crab_plus_records)
    train, _ = read_crab_plus_records(root, scenes.AVUIE2_TASKS, "train")
    assert len(texts) == 2 * (len(train) + len(heldout))


def test_default_dataset_folder_names_the_format_version(tmp_path):
    """A dataset written by an older generator (no AVUIE_2) is never found under the default name."""
    data = dataclasses.replace(RunConfig.from_config(get_config()).data, path="", cache_dir=str(tmp_path),
                               tasks=("ave", "s4"))
    name = synthetic_root(data).name
    assert synthetic_root(data).parent == tmp_path / "synthetic"
    assert name.startswith(f"v{gen.FORMAT_VERSION}-") and gen.FORMAT_VERSION >= 2
    assert name.endswith("-ave_s4")
