"""``python -m crab_jax.infer --weights``'s request flags (``--input`` or ``--data-root``), refused
before any weight is read, and the dataset mode's reading (per task, ``--max-items``, rejected
entries kept with their task). No model: the end-to-end run is tests/test_end_to_end_avuie.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from crab_jax.cli.infer import main
from crab_jax.cli.quick_start import UsageError, read_dataset
from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.record import Record


@pytest.mark.parametrize("flags, message", [
    ((), "exactly one of --input"),
    (("--input", "s.json", "--media-root", "{tmp}", "--data-root", "{tmp}"), "exactly one of --input"),
    (("--data-root", "{tmp}"), "--data-root needs --tasks"),
    (("--data-root", "{tmp}", "--tasks", "ave", "--media-root", "{tmp}"), "--media-root is for --input"),
    (("--data-root", "{tmp}/nowhere", "--tasks", "ave"), "not a folder"),
    (("--data-root", "{tmp}", "--tasks", "ave", "--max-items", "-1"), "--max-items must be >= 0"),
    (("--input", "s.json", "--media-root", "{tmp}", "--tasks", "ave"), "--tasks: only with --data-root"),
    (("--input", "s.json"), "--media-root (not given): not a folder"),
])
def test_request_flags_are_checked_before_the_weights(tmp_path, capsys, flags, message):
    argv = ["--weights", str(tmp_path / "no_weights"), "--output", str(tmp_path / "p.jsonl")]
    argv += [f.format(tmp=tmp_path) for f in flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "no_weights" not in err, err
    assert not (tmp_path / "p.jsonl").exists()


def _record(task: str, i: int, gt: str | None = "gt") -> Record:
    return Record(family="crab", task=task, mode="test", split="test", source=f"{task}.json#{i}", gt=gt)


def _family(by_task: dict, calls: list):
    def read_records(root, tasks, split, seed=0):
        calls.append((root, tuple(tasks), split, seed))
        (task,) = tasks
        return by_task[task]

    return SimpleNamespace(read_records=read_records)


def test_dataset_records_per_task_with_their_gt_as_target_and_rejected_entries(tmp_path):
    bad = BadRecordError("ave.json#2", "missing field 'vid'")
    by_task = {"ave": ([_record("ave", 0), _record("ave", 1)], [bad]),
               "s4": ([_record("s4", i) for i in range(5)], [])}
    calls = []
    req = read_dataset(_family(by_task, calls), str(tmp_path), ("ave", "s4"), "test", max_items=3, seed=7)
    assert calls == [(str(tmp_path), ("ave",), "test", 7), (str(tmp_path), ("s4",), "test", 7)]
    assert [r.source for r in req.records] == ["ave.json#0", "ave.json#1", "s4.json#0", "s4.json#1", "s4.json#2"]
    assert all(r.answer == r.gt for r in req.records)  # the builder tokenizes a target; the prompt batch cuts it
    assert req.read_errors == [("ave", bad)] and req.media_root == str(tmp_path)


def test_no_dataset_record_is_a_usage_error_naming_the_first_rejected_entry(tmp_path):
    bad = BadRecordError("ave/test_samples.json", "annotation file not found")
    with pytest.raises(UsageError, match="no test records of tasks ave .*annotation file not found"):
        read_dataset(_family({"ave": ([], [bad])}, []), str(tmp_path), ("ave",), "test", max_items=0, seed=0)
