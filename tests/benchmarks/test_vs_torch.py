"""``benchmarks/vs_torch.py`` without the original: its command line, the message without
``CRAB_REPO``, the fixture's samples as crab_jax records, and the table's arithmetic."""

from __future__ import annotations

import sys

import pytest

from benchmarks import vs_torch as V
from crab_jax.families.crab import prompts as P


def test_without_crab_repo_it_exits_with_one_line_saying_what_to_set(monkeypatch, capsys):
    monkeypatch.delenv("CRAB_REPO", raising=False)
    monkeypatch.delenv("CRAB_TORCH_PYTHON", raising=False)
    assert V.main([]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "CRAB_REPO" in lines[0] and "CRAB_TORCH_PYTHON" in lines[0]


def test_a_folder_that_is_not_the_original_is_named(tmp_path, capsys):
    assert V.main(["--crab-repo", str(tmp_path), "--torch-python", sys.executable]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path) in err and "models/unified_llama.py" in err and len(err.splitlines()) == 1


def test_the_original_and_its_python_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CRAB_REPO", str(tmp_path))
    monkeypatch.setenv("CRAB_TORCH_PYTHON", "/venv/bin/python")
    args = V.parse_args([])
    assert (args.crab_repo, args.torch_python) == (str(tmp_path), "/venv/bin/python")
    assert V.parse_args(["--crab-repo", "elsewhere"]).crab_repo == "elsewhere"
    with pytest.raises(SystemExit):
        V.parse_args(["--reps", "0"])


def test_fixture_records_render_the_fixtures_texts(manifest):
    config = manifest["fixtures"]["crab_full"]["config"]
    pairs = V.fixture_records(config)
    assert [r.task for r, _ in pairs] == list(config["batch_tasks"])
    for (record, answer), text in zip(pairs, config["texts"]):
        assert P.llama2_chat(P.crab_instruction(record)) == text["instruction"], record.task
        assert P.crab_target(record, answer) == text["output"], record.task


def test_rows_are_medians_and_paired_speed_ratios():
    # original twice as slow in every round, crab_jax's times noisy: the paired ratio stays 2
    ours = [1.0, 3.0, 2.0]
    times = {m: {"crab_jax": list(ours), "original": [2 * x for x in ours]} for m in V.MEASURES}
    times["gen_32"] = {"crab_jax": [x + 31 * 0.01 for x in ours], "original": [2 * x + 31 * 0.5 for x in ours]}
    rows = {r["measure"]: r for r in V.summarize(times, batch=3)}
    lm = rows["train step, LM path"]
    assert lm["speed"] == pytest.approx(2.0) and lm["crab_jax"] == pytest.approx(3 / 2.0)
    assert lm["original"] == pytest.approx(3 / 4.0) and lm["met"] is False and lm["target"] == V.TARGETS["train_lm"]
    per_token = rows["decoding, per token (batch of 3)"]
    assert per_token["crab_jax"] == pytest.approx(10.0) and per_token["original"] == pytest.approx(500.0)
    assert per_token["speed"] == pytest.approx(50.0) and per_token["target"] is None
    # bests: the fastest rep of each side (1.0 s for crab_jax, 2.0 s for the original)
    assert lm["best_crab_jax"] == pytest.approx(3.0) and lm["best_speed"] == pytest.approx(2.0)
    assert per_token["best_crab_jax"] == pytest.approx(10.0) and per_token["best_speed"] == pytest.approx(50.0)
