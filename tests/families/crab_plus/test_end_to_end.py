"""Crab+ end to end on every task of the release: a test-made AV-UIE v2 layout over
``shared/media`` -> train (a few steps of the tiny thinker, every task in the batches) ->
``infer`` from the run's workdir -> the SAM2 stage (a tiny random SAM 2.1) -> ``evaluate``.

A random tiny model's answers have no valid box, so the segmentation lines are also run with
the answer text replaced by a well-formed one (box + points; Ref-AVS true / false): the stage
must turn those into masks and the scorers must score them; the model's own answers must come
out counted invalid, not lost.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crab_jax.cli.evaluate import main as evaluate_main
from crab_jax.cli.quick_start import main as infer_main
from crab_jax.cli.segment import main as segment_main
from crab_jax.config.loader import load_config_file
from crab_jax.data.records.crab_plus import CRAB_PLUS_TASKS, CRAB_PLUS_TRAIN_ONLY
from crab_jax.evaluation.sam2_stage import FRAME_SIZE, OUTPUT_FILE
from crab_jax.models.sam2.config import tiny as tiny_sam2
from crab_jax.training.loop import run_training
from tests.families.crab_plus.avuie2_layout import SEG_ANSWER, write_avuie2_layout
from tests.families.crab_plus.thinker_helpers import MODEL_DIR
from tests.models.sam2.conftest import hf_model
from tests.train_helpers import REPO

pytestmark = pytest.mark.slow
TEST_TASKS = tuple(t for t in CRAB_PLUS_TASKS if t not in CRAB_PLUS_TRAIN_ONLY)
SEG_TASKS = ("s4", "ms3", "ref_avs")


@pytest.fixture(scope="module")
def run(crab_plus_fixtures_dir, tmp_path_factory):
    """``(data root, workdir, predictions file)`` after training and inference."""
    base = tmp_path_factory.mktemp("e2e")
    root = base / "data"
    write_avuie2_layout(root, crab_plus_fixtures_dir.parent.parent / "media")
    c = load_config_file(str(REPO / "configs" / "crab_plus_tiny.py"))
    c.data.source = "avuie"
    c.data.path = str(root)
    c.data.tokenizer = str(crab_plus_fixtures_dir / MODEL_DIR)
    c.data.cache_dir = str(base / "cache")
    c.data.tasks = CRAB_PLUS_TASKS
    c.data.buckets = (768,)
    c.train.global_batch = 4
    c.train.num_steps = 2
    c.checkpoint.every_steps = 2  # the workdir's checkpoint is what infer reads
    c.eval.at_end = False
    workdir = base / "run"
    result = run_training(c, workdir)
    preds = base / "preds.jsonl"
    assert infer_main(["--weights", str(workdir), "--data-root", str(root), "--tasks", ",".join(TEST_TASKS),
                       "--output", str(preds), "--max-new-tokens", "6", "--batch-size", "4",
                       "--length-multiple", "1024", "--no-progress"]) == 0
    return root, workdir, preds, result


def test_training_saw_every_task_and_logged_per_task_metrics(run):
    _, workdir, _, result = run
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = {k.split("/")[1] for line in lines for k in line if k.startswith("task/")}
    assert logged, "per-task losses are logged"
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
    assert (workdir / "checkpoints").is_dir()


def test_inference_wrote_one_line_per_test_record(run):
    root, _, preds, _ = run
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    by_task = {t: [line for line in lines if line["task"] == t] for t in TEST_TASKS}
    assert all(by_task[t] for t in TEST_TASKS), {t: len(v) for t, v in by_task.items()}
    assert all("predict" in line and "error" not in line for line in lines)
    assert len(by_task["ref_avs"]) == 3 and {line["split"] for line in by_task["ref_avs"]} == {"test_s", "test_u",
                                                                                             "test_n"}
    assert all(line["output"] for line in lines)  # the GT string the original stores


def _well_formed(line: dict) -> dict:
    if line["task"] not in SEG_TASKS:
        return line
    answer = SEG_ANSWER
    if line["task"] == "ref_avs":
        answer = ("<answer>false</answer> The object is absent." if line["split"] == "test_n"
                  else "<answer>true</answer> " + SEG_ANSWER)
    return {**line, "predict": answer}


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sam2") / "hf"
    hf_model(tiny_sam2()).save_pretrained(out)
    return out


def test_sam2_stage_and_evaluate_every_task(run, sam2_dir, tmp_path, capsys):
    root, _, preds, _ = run
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    fixed = tmp_path / "preds_fixed.jsonl"
    fixed.write_text("".join(json.dumps(_well_formed(line)) + "\n" for line in lines))
    for source, out in ((preds, tmp_path / "sam2_model"), (fixed, tmp_path / "sam2_fixed")):
        assert segment_main(["--predictions", str(source), "--sam2", str(sam2_dir), "--data-root", str(root),
                             "--out", str(out), "--batch-size", "2", "--no-progress"]) == 0
    model_lines = [json.loads(x) for x in (tmp_path / "sam2_model" / OUTPUT_FILE).read_text().splitlines()]
    assert len(model_lines) == len(lines)
    seg = [line for line in model_lines if line["task"] in SEG_TASKS]
    assert seg and all("sam2_valid" in line for line in seg)
    fixed_lines = [json.loads(x) for x in (tmp_path / "sam2_fixed" / OUTPUT_FILE).read_text().splitlines()]
    for line in fixed_lines:
        if line["task"] not in SEG_TASKS:
            continue
        assert line["sam2_valid"], line
        mask = np.asarray(Image.open(tmp_path / "sam2_fixed" / line["pred_mask_path"]))
        assert mask.shape == (FRAME_SIZE, FRAME_SIZE)
        if line.get("sam2_negative"):
            assert not mask.any()
    capsys.readouterr()
    table_json = tmp_path / "tables.json"
    argv = ["--family", "crab_plus", "--task", "all", "--predictions", str(tmp_path / "sam2_fixed" / OUTPUT_FILE),
            "--data-root", str(root), "--json", str(table_json)]
    assert evaluate_main(argv) == 0
    printed = capsys.readouterr().out
    tables = json.loads(table_json.read_text())["tasks"]
    summary = printed.split("== summary", 1)[1]
    for task in TEST_TASKS:
        assert task in printed, task
        assert f"\n{task} " in summary, task  # one headline number per task
        table = tables[task]
        assert table["scored"] >= 1 and not table["unusable"], (task, table)
        assert any(m["value"] is not None for m in table["metrics"]), (task, table)
    # the well-formed seg answers gave masks: J and F are numbers, the negative an S
    for task in ("s4", "ms3"):
        assert tables[task]["unparsable"] == 0, tables[task]
