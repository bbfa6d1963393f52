"""Scoring files with a family's task scorers (a made-up family: the module names none)."""

from __future__ import annotations

import json
import types

import pytest

from crab_jax.evaluation import scoring
from crab_jax.metrics.tables import MetricRow, TaskTable, UnusableRow


class CountScorer:
    """Counts 'yes' predictions; a line with "bad" raises UnusableRow."""

    required_fields = (("predict",),)

    def __init__(self, ctx, name):
        self.name, self.yes, self.n = name, 0, 0

    def add(self, row, ctx):
        if row.get("bad"):
            raise UnusableRow("bad reference")
        self.n += 1
        self.yes += row["predict"] == "yes"

    def table(self):
        return TaskTable(self.name, (MetricRow("yes rate", self.yes / self.n if self.n else float("nan"), self.n),),
                         self.n, 0)


FAMILY = types.SimpleNamespace(name="toy", task_scorers={t: (lambda ctx, t=t: CountScorer(ctx, t)) for t in "ab"})


def write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_lines_go_to_their_task_and_unusable_ones_are_listed(tmp_path):
    f = write(tmp_path / "p.jsonl", [{"task": "a", "predict": "yes"}, {"task": "b", "predict": "no"},
                                     {"task": "a", "predict": "no"}, "{oops", {"task": "a"},
                                     {"task": "a", "predict": "yes", "bad": 1}, {"task": "c", "predict": "yes"},
                                     {"predict": "yes"}])
    report = scoring.score_files(FAMILY, ["a", "b"], [f])
    a, b = report.tables
    assert a.metrics[0] == MetricRow("yes rate", 0.5, 2) and b.metrics[0].value == 0.0
    assert [(n, r) for _, n, r in a.unusable] == [(5, "lacks the field 'predict'"), (6, "bad reference")]
    assert [n for _, n, _ in report.unusable] == [4, 5, 6, 8]   # 8: no task and two asked for
    assert report.ignored == 1 and report.scored == 3
    text = scoring.format_report(report)
    assert "4 lines unusable (line numbers p.jsonl: 4, 5, 6, 8)" in text and "1 lines of other tasks ignored" in text
    data = scoring.report_json(report)
    assert data["tasks"]["a"]["metrics"] == [{"name": "yes rate", "value": 0.5, "n": 2}]
    assert [u["line"] for u in data["unusable"]] == [4, 5, 6, 8]
    # the original's files: no task field, one task asked for (line 8 joins b; a's lines are ignored)
    only_b = scoring.score_files(FAMILY, ["b"], [f])
    assert only_b.tables[0].metrics[0] == MetricRow("yes rate", 0.5, 2) and only_b.ignored == 5  # a x4, c


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no scorer for task"):
        scoring.score_files(FAMILY, ["z"], [])
    with pytest.raises(FileNotFoundError):
        scoring.score_files(FAMILY, ["a"], [str(tmp_path / "none.jsonl")])


def test_locate_rebases_absolute_paths_of_other_machines(tmp_path):
    (tmp_path / "mask_img_dir" / "vid").mkdir(parents=True)
    target = tmp_path / "mask_img_dir" / "vid" / "0_pred.png"
    target.write_bytes(b"x")
    ctx = scoring.Context(str(tmp_path), (str(tmp_path),), "p.jsonl", False)
    assert ctx.locate("/group/ckpt/inference_s4/mask_img_dir/vid/0_pred.png", "mask") == str(target)
    assert ctx.locate("mask_img_dir/vid/0_pred.png", "mask") == str(target)
    with pytest.raises(UnusableRow, match="predicted mask '/x/0_pred.png' not found"):
        ctx.locate("/x/0_pred.png", "predicted mask")   # a bare file name is never matched


def test_table_format_shows_counts():
    t = TaskTable("s4", (MetricRow("J (mIoU)", 0.25, 4),), 4, 1, 0, ((("f", 3, "r")),), ("a note",))
    text = scoring.format_table(t)
    assert "J (mIoU)" in text and "0.2500" in text and "4 lines scored, 1 unparsable (scored as wrong), 1 unusable" in text
    assert "note: a note" in text
