"""Reading predictions files: bad lines are reported by number, the others returned."""

from __future__ import annotations

import pytest

from crab_jax.evaluation.predictions import missing_fields, read_predictions


def test_bad_lines_are_reported_by_line_number(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_bytes(b'{"predict": "a", "output": "b"}\n'
                     b'not json\n'
                     b'\n'
                     b'[1, 2]\n'
                     b'{"output": "b"}\n'
                     b'\xff\xfe\n'
                     b'{"predict": "c", "reference": {}}\n'
                     b'{"predict": "d", "outp')  # truncated last line
    read = read_predictions(path, required=(("predict",), ("reference", "output")))
    assert [(r.line, r.row["predict"]) for r in read.rows] == [(1, "a"), (7, "c")]
    assert [n for n, _ in read.bad] == [2, 4, 5, 6, 8]
    reasons = dict(read.bad)
    assert reasons[2].startswith("not JSON") and "list" in reasons[4]
    assert "'predict'" in reasons[5] and "UTF-8" in reasons[6] and reasons[8].startswith("not JSON")


def test_missing_fields_groups_and_missing_file(tmp_path):
    assert missing_fields({"a": 1}, (("a",), ("b", "c"))) == "lacks a field among 'b', 'c'"
    assert missing_fields({"a": 1, "c": None}, (("a",),)) is None
    assert missing_fields({"a": None}, (("a",),)) == "lacks the field 'a'"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_predictions(tmp_path / "nope.jsonl")
