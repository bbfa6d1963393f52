"""README command 1's path, shortened: ``train(configs/tiny.py)`` on the synthetic source.

dataset generation -> word tokenizer (the model's vocabulary follows it) -> Grain pipeline
(one compiled step per bucket) -> train steps -> checkpoint with the iterator's position ->
held-out generation scored per task vs chance. Above-chance accuracy is the full demo's job
(README); this test checks that every stage runs and writes what it should.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train_helpers import compile_cache, synthetic_tiny_config

STEPS = 3


def short_tiny_config(tmp_path):
    """``configs/tiny.py`` with a tiny dataset, a few steps, small buckets and one eval batch."""
    return synthetic_tiny_config(tmp_path, ("avqa", "s4"), num_train=8, steps=STEPS, **{
        "data.frame_slots": 10, "data.audio_slots": 10, "checkpoint.every_steps": 2, "eval.max_batches": 1,
        "eval.max_new_tokens": 4, "metrics.log_every": 1, "metrics.tensorboard": True})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from crab_jax.training.loop import run_training

    tmp = tmp_path_factory.mktemp("tiny_e2e")
    with compile_cache(tmp_path_factory.mktemp("jax_cache_e2e")):
        result = run_training(short_tiny_config(tmp), tmp / "workdir")
    return tmp, result


def test_dataset_and_tokenizer_are_made_and_the_vocabulary_follows_them(run):
    tmp, result = run
    data = result.data
    assert (tmp / "synthetic" / "manifest.json").is_file()
    assert data.tokenizer_dir.is_relative_to(tmp / "cache") and (data.tokenizer_dir / "tokenizer.json").is_file()
    assert data.base_vocab == len(data.tokenizer) - 17
    from crab_jax.training.setup import resolve, run_model_config

    cfg = run_model_config(*resolve(short_tiny_config(tmp)), data)
    assert cfg.special_token_ids["<image>"] == data.base_vocab
    assert cfg.llama.vocab_size == len(data.tokenizer)


def test_steps_run_and_metrics_are_written(run):
    tmp, result = run
    workdir = tmp / "workdir"
    assert [h["step"] for h in result.history] == list(range(1, STEPS + 1))
    assert all(np.isfinite(h["loss"]) for h in result.history)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == list(range(1, STEPS + 1))
    last = train_lines[-1]
    assert last["data/seen"] == STEPS * 4 and last["data/bad"] == 0
    assert {"task/avqa/lm_loss", "task/s4/lm_loss"} & set(last)
    assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
    assert result.tensorboard_dir == workdir / "tensorboard"


def test_checkpoint_holds_the_data_iterator_position(run):
    from crab_jax.checkpoints.run import Checkpointer

    tmp, _ = run
    ckpt = Checkpointer(tmp / "workdir" / "checkpoints", async_save=False)
    try:
        assert ckpt.latest_step() == STEPS
        data_state = ckpt.read_meta(STEPS)["data"]
    finally:
        ckpt.close()
    assert data_state["kind"] == "crab_grain" and data_state["position"] == STEPS


def test_routing_figures_of_the_evaluation_are_tensorboard_images(run):
    from tests.train_helpers import tensorboard_images

    tmp, result = run
    images = tensorboard_images(tmp / "workdir" / "tensorboard")
    assert set(images) == {"routes/head_task", "routes/layers", "routes/similarity"}
    for tag, entries in images.items():
        assert [step for step, _, _ in entries] == [STEPS], tag  # the evaluation at the end
        assert all(h > 50 and w > 50 for _, h, w in entries), tag


def test_heldout_evaluation_is_scored_and_logged(run):
    tmp, result = run
    assert result.evals and result.evals[-1][0] == STEPS
    _, results = result.evals[-1]
    tasks = {k.split("/")[0] for k in results}
    assert tasks <= {"avqa", "s4"} and tasks
    for key, entry in results.items():
        assert 0.0 <= entry["mean"] <= 1.0 and entry["n"] > 0, (key, entry)
    assert any("chance" in e for e in results.values())
    rows = [json.loads(x) for x in (tmp / "workdir" / "eval.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == STEPS and rows[-1]["results"] == json.loads(json.dumps(results))
    lines = [json.loads(x) for x in (tmp / "workdir" / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("eval/") for x in lines for k in x)


def test_summary_names_loss_metrics_and_logs(run):
    from crab_jax.train import summary_lines

    tmp, result = run
    text = "\n".join(summary_lines(result, 1.0))
    assert "loss:" in text and "chance" in text and str(tmp / "workdir" / "tensorboard") in text
