"""eval.jsonl on resume: rows of steps past the resumed checkpoint (written by the run that died
after it) are dropped, a torn last line is cut, rows up to the step are kept unchanged."""

from __future__ import annotations

import json

from crab_jax.evaluation.heldout import EVAL_JSONL, append_eval_jsonl, trim_eval_jsonl


def steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_drops_eval_rows_past_the_resumed_step(tmp_path):
    for step in (2, 4, 6):
        append_eval_jsonl(tmp_path, step, {"ave/accuracy": {"mean": step / 10, "n": 4}})
    path = tmp_path / EVAL_JSONL
    kept = path.read_text().splitlines()[:2]
    with open(path, "a") as f:
        f.write('{"step": 8, "resu')  # the dead run's torn write
    trim_eval_jsonl(tmp_path, 4)
    assert steps(path) == [2, 4]
    assert path.read_text().splitlines() == kept
    append_eval_jsonl(tmp_path, 6, {"ave/accuracy": {"mean": 0.7, "n": 4}})  # the resumed run's
    assert steps(path) == [2, 4, 6]


def test_no_eval_file_is_left_alone(tmp_path):
    trim_eval_jsonl(tmp_path, 3)
    assert not (tmp_path / EVAL_JSONL).exists()
