"""A run's data section -> training iterator: an annotation file that cannot be read fails the
run at start-up naming the file and position, unless ``data.skip_bad_files`` skips it (logged,
listed in stats() and the end-of-run summary)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from crab_jax import families
from crab_jax.config.schema import get_config
from crab_jax.config.sections import RunConfig
from crab_jax.data.errors import UnreadableAnnotationsError
from crab_jax.data.pipeline.bad_records import summary_lines
from crab_jax.data.records.crab import annotation_path
from crab_jax.data.sources import DataSetup, train_iterator
from tests.data.pipeline.crab_data import BUCKETS, TASKS, make_dataset, setup_for

TRUNCATED = annotation_path("avqa", "train")


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    """Synthetic AV-UIE data whose AVQA training file is cut in the middle (indented: several lines)."""
    root = make_dataset(tmp_path_factory.mktemp("truncated"))
    path = root / TRUNCATED
    text = json.dumps(json.loads(path.read_text()), indent=2)
    path.write_text(text[:len(text) // 2])
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(text[:len(text) // 2])
    _, _, tok, cfg, _ = setup_for(root)
    return root, tok, cfg, (e.value.lineno, e.value.colno)


def _iterator(data, tmp_path, **data_keys):
    root, tok, cfg, _ = data
    run = RunConfig.from_config(get_config())
    run = run.replace(data=dataclasses.replace(run.data, source="avuie", path=str(root), tasks=TASKS, buckets=BUCKETS,
                                               frame_slots=10, audio_slots=10, cache_dir=str(tmp_path), **data_keys),
                      train=dataclasses.replace(run.train, global_batch=4))
    setup = DataSetup("avuie", root, None, tok, None, tmp_path)
    return train_iterator(run, families.get("crab"), cfg, setup, progress=False)


def test_an_unreadable_annotation_file_fails_the_run_at_start_naming_file_and_position(truncated, tmp_path):
    line, column = truncated[3]
    with pytest.raises(UnreadableAnnotationsError) as e:
        _iterator(truncated, tmp_path)
    msg = str(e.value)
    assert TRUNCATED in msg and f"line {line} column {column}" in msg and line > 1
    assert "data.skip_bad_files" in msg and "task avqa" in msg


def test_skip_bad_files_trains_without_the_file_and_logs_it(truncated, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="crab_jax"):
        it = _iterator(truncated, tmp_path, skip_bad_files=True)
    skipped = [r.getMessage() for r in caplog.records if "annotation file skipped" in r.getMessage()]
    assert len(skipped) == 1 and TRUNCATED in skipped[0] and "whole file" in skipped[0]
    batch = next(it)
    assert batch["input_ids"].shape[0] == 4
    tasks = {r.task for r in it.decoder.source.records}
    assert "avqa" not in tasks and tasks == set(TASKS) - {"avqa"}
    st = it.stats()
    assert st["skipped_files"] == 1 and st["index_bad"] == 0  # a skipped file is no bad record
    summary = "\n".join(summary_lines(st))
    assert "1 annotation file(s) skipped" in summary and TRUNCATED in summary and "task avqa" in summary


@pytest.fixture(scope="module")
def truncated_test(tmp_path_factory):
    """Synthetic AV-UIE data whose AVQA held-out (test) file is cut in the middle."""
    root = make_dataset(tmp_path_factory.mktemp("truncated_test"))
    path = root / annotation_path("avqa", "test")
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    _, _, tok, cfg, _ = setup_for(root)
    return root, tok, cfg


def _check_heldout(data, tmp_path, **data_keys):
    from crab_jax.data.sources import check_heldout_files

    root, tok, _ = data
    run = RunConfig.from_config(get_config())
    run = run.replace(data=dataclasses.replace(run.data, source="avuie", path=str(root), tasks=TASKS, **data_keys))
    check_heldout_files(run, families.get("crab"), DataSetup("avuie", root, None, tok, None, tmp_path))


def test_an_unreadable_heldout_annotation_file_fails_at_start_naming_it(truncated_test, tmp_path, caplog):
    with pytest.raises(UnreadableAnnotationsError) as e:
        _check_heldout(truncated_test, tmp_path)
    assert annotation_path("avqa", "test") in str(e.value) and "test split" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="crab_jax"):
        _check_heldout(truncated_test, tmp_path, skip_bad_files=True)
    assert any(annotation_path("avqa", "test") in r.getMessage() for r in caplog.records)
