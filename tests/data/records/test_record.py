"""The shared record plumbing: path rules, label files, annotation files, the picklable error types."""

from __future__ import annotations

import json
import pickle

import pytest

from crab_jax.data.errors import BadFileError, BadRecordError
from crab_jax.data.records.record import Record, load_answer, load_json_list, resolve


def test_paths_labels_and_errors(tmp_path):
    with pytest.raises(BadRecordError, match="relative to the data root"):
        resolve(tmp_path, "../etc/passwd")
    rec = Record(family="crab", task="ave", mode="train", split="train", source="s#0", answer_file="ave/none.txt")
    with pytest.raises(BadRecordError, match="label file not found") as e:
        load_answer(rec, tmp_path)
    assert e.value.path == "ave/none.txt"
    err = pickle.loads(pickle.dumps(BadRecordError("p", "why")))
    assert (err.path, err.reason, str(err)) == ("p", "why", "p: why")


def _truncated_json_list(entries, cut_fraction=0.6):
    """``entries`` as an indented JSON list cut at ``cut_fraction`` of its length, and how many
    entries are complete before the cut (the list of the first k entries, less its closing
    ``"\\n]"``, is a prefix of the whole list's text)."""
    full = json.dumps(entries, indent=2)
    cut = int(len(full) * cut_fraction)
    complete = max(k for k in range(1, len(entries) + 1) if len(json.dumps(entries[:k], indent=2)) - 2 <= cut)
    return full[:cut], complete


def test_a_truncated_json_file_is_a_file_error_with_its_position(tmp_path):
    entries = [dict(vid=f"v{i}", event="Bark", start_time=0, end_time=i) for i in range(12)]
    text, complete = _truncated_json_list(entries)
    (tmp_path / "ann.json").write_text(text)
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    with pytest.raises(BadFileError) as e:
        load_json_list(tmp_path / "ann.json", "ave/ann.json")
    err = e.value
    assert isinstance(err, BadRecordError) and err.path == "ave/ann.json"
    assert (err.line, err.column) == (want.value.lineno, want.value.colno) and want.value.lineno > 1
    assert f"line {want.value.lineno} column {want.value.colno}" in err.reason
    assert err.entries == complete and 0 < complete < len(entries)
    again = pickle.loads(pickle.dumps(err.with_task("ave")))  # through worker processes
    assert isinstance(again, BadFileError) and (again.task, again.line, again.entries) == ("ave", err.line, complete)
    with pytest.raises(BadFileError, match="annotation file not found"):
        load_json_list(tmp_path / "none.json")
