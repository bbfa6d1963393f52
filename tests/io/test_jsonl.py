"""A ``gs://`` workdir: metric and evaluation JSONL files reach the object store (rewritten
whole, since objects cannot be appended to) and a resumed run keeps the earlier lines.

``etils.epath.testing.mock_epath`` routes ``gs://`` paths to the local disk (under the test's
working directory), standing in for Cloud Storage.
"""

from __future__ import annotations

import json

import pytest
from etils.epath import testing as epath_testing

from crab_jax.io.paths import as_path
from crab_jax.evaluation.heldout import append_eval_jsonl
from crab_jax.io.jsonl import JsonlFile
from crab_jax.training.metric_writer import MetricWriter


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with epath_testing.mock_epath():
        yield tmp_path / "gs:" / "bucket"  # where "gs://bucket/..." lands


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_and_evals_reach_a_gs_workdir_and_survive_a_resume(fake_gcs):
    workdir = "gs://bucket/run"
    assert str(as_path(workdir)) == workdir
    writer = MetricWriter(workdir, tensorboard=False)
    writer.write(1, {"loss": 2.0})
    writer.write(2, {"loss": 1.5})
    writer.close()
    append_eval_jsonl(workdir, 2, {"ave/accuracy": {"mean": 0.5, "n": 4}})
    assert lines(fake_gcs / "run" / "metrics.jsonl") == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    writer = MetricWriter(workdir, tensorboard=False)  # the resumed run
    writer.write(3, {"loss": 1.0})
    writer.close()
    append_eval_jsonl(workdir, 3, {"ave/accuracy": {"mean": 0.75, "n": 4}})
    assert [r["step"] for r in lines(fake_gcs / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in lines(fake_gcs / "run" / "eval.jsonl")] == [2, 3]


def test_remote_file_is_rewritten_at_most_every_interval(fake_gcs):
    f = JsonlFile("gs://bucket/m.jsonl", flush_every_s=3600)
    f.append({"a": 1})
    assert not (fake_gcs / "m.jsonl").exists()  # held until the interval or close
    f.close()
    assert lines(fake_gcs / "m.jsonl") == [{"a": 1}]
    f = JsonlFile("gs://bucket/m.jsonl", flush_every_s=0)
    f.append({"a": 2})
    assert lines(fake_gcs / "m.jsonl") == [{"a": 1}, {"a": 2}]  # flushed at once
    f.close()
