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


# --- repair on open: torn last line, rows past the resumed step, failed writes -----------------

def write_raw(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("torn", ['{"step": 3, "lo', '{"step": 3, "loss": 1.0}', '{"step": 3, "lo\n'],
                         ids=["no-newline", "whole-row-no-newline", "unparsable-with-newline"])
def test_a_torn_last_line_is_cut_with_one_warning_naming_the_file(tmp_path, caplog, torn):
    path = write_raw(tmp_path / "metrics.jsonl", '{"step": 1}\n{"step": 2}\n' + torn)
    with caplog.at_level("WARNING", logger="crab_jax.io"):
        f = JsonlFile(path)
    f.append({"step": 3, "loss": 0.5})
    f.close()
    assert lines(path) == [{"step": 1}, {"step": 2}, {"step": 3, "loss": 0.5}]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()


def test_a_clean_file_is_left_as_it_is(tmp_path, caplog):
    path = write_raw(tmp_path / "m.jsonl", '{"step": 1}\n{"note": "x"}\n')
    with caplog.at_level("INFO", logger="crab_jax.io"):
        JsonlFile(path, keep_through_step=1).close()
    assert path.read_text() == '{"step": 1}\n{"note": "x"}\n' and not caplog.records


def test_rows_past_the_resumed_step_are_dropped_so_each_step_has_one_row(tmp_path):
    workdir = tmp_path / "run"
    writer = MetricWriter(workdir, tensorboard=False)
    for step in range(1, 8):  # the first run: checkpoint at 6, crash after logging 7
        writer.write(step, {"loss": float(step)})
    writer.close()
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # and a torn row
    writer = MetricWriter(workdir, tensorboard=False, resumed_step=6)
    for step in (7, 8):
        writer.write(step, {"loss": 10.0 + step})
    writer.close()
    rows = lines(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[6]["loss"] == 17.0  # step 7 of the resumed run, not the lost one


def test_remote_file_is_repaired_too(fake_gcs):
    (fake_gcs / "run").mkdir(parents=True)
    write_raw(fake_gcs / "run" / "metrics.jsonl", '{"step": 1}\n{"step": 2}\n{"step": 3')
    f = JsonlFile("gs://bucket/run/metrics.jsonl", keep_through_step=1)
    f.close()
    assert lines(fake_gcs / "run" / "metrics.jsonl") == [{"step": 1}]


def test_disk_full_while_appending_is_one_clear_error_and_the_next_open_repairs(tmp_path, monkeypatch):
    import errno

    from crab_jax.io.write_errors import WriteFailed

    path = tmp_path / "metrics.jsonl"
    f = JsonlFile(path)
    f.append({"step": 1})

    class FullDisk:  # writes half the line, then the disk is full (as a real torn write)
        def __init__(self, real):
            self.real = real

        def write(self, text):
            self.real.write(text[: len(text) // 2])
            self.real.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.real.close()

    f._file = FullDisk(f._file)
    with pytest.raises(WriteFailed) as e:
        f.append({"step": 2, "loss": 1.0})
    message = str(e.value)
    assert e.value.errno == errno.ENOSPC and "\n" not in message
    assert str(path) in message and "No space left on device" in message and " free of " in message
    f.close()  # no second error from the buffer that could not be written
    assert not path.read_text().endswith("\n")  # the torn half line
    JsonlFile(path).close()
    assert lines(path) == [{"step": 1}]
