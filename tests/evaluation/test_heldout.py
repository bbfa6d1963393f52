"""eval.jsonl on resume: rows of steps past the resumed checkpoint (written by the run that died
after it) are dropped, a torn last line is cut, rows up to the step are kept unchanged."""

from __future__ import annotations

import json

from crab_jax.evaluation.heldout import EVAL_JSONL, append_eval_jsonl, headline, trim_eval_jsonl


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


def test_headline_takes_the_family_metric_then_exact_match_then_the_tasks_first_row():
    results = {"avqa/accuracy": {"mean": 0.5, "n": 4}, "avqa/Visual/avg": {"mean": 0.2, "n": 2},
               "avqa/unparsable": {"mean": 0.1, "n": 4}, "ks/exact_match": {"mean": 0.25, "n": 4},
               "ks/other": {"mean": 0.9, "n": 4}, "s4/s4": {"mean": 0.7, "n": 3}, "s4/J_mIoU": {"mean": 0.3, "n": 3},
               "ave/unparsable": {"mean": 1.0, "n": 2}}
    got = headline(results, {"s4": ("s4_category", "s4"), "avqa": ("avqa",)})
    assert {t: e["metric"] for t, e in got.items()} == {"avqa": "accuracy", "ks": "exact_match", "s4": "s4"}
    assert got["avqa"]["mean"] == 0.5  # records' scorers: the paper table's first row, never "unparsable"
