"""The trainer on the tiny CPU Crab: the loss falls, a killed run resumes bit-exactly, and bad
configs fail before anything compiles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train_helpers import compile_cache, small_config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("jax_cache")
    with compile_cache(d):
        yield d


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    from crab_jax.training.loop import train

    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, train(small_config(), workdir)


def test_loss_falls_on_a_repeated_batch_set(uninterrupted):
    workdir, history = uninterrupted
    losses = [h["loss"] for h in history]
    assert len(losses) == 16 and all(np.isfinite(losses))
    # Two fixed batches alternate: compare like with like (same batch, 14 steps apart).
    assert losses[-2] < losses[0] - 0.05 and losses[-1] < losses[1] - 0.05, losses
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 17))
    last = lines[-1]
    assert {"loss", "grad_norm", "tokens_per_s", "step_time_s", "lr"} <= set(last)
    assert any(k.startswith("task/") and k.endswith("/lm_loss") for k in last)
    heads = [v for k, v in last.items() if k.startswith("router/")]
    assert heads and all(0.0 < v < 1.0 for v in heads)


def test_kill_and_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path, cache_dir):
    from crab_jax.training.loop import train

    _, full = uninterrupted
    first = train(small_config(**{"train.stop_after_steps": 6}), tmp_path)  # "killed" after step 6
    assert [h["step"] for h in first] == list(range(1, 7))
    second = train(small_config(), tmp_path)  # the same command again
    assert [h["step"] for h in second] == list(range(7, 17))
    got = [h["loss"] for h in first + second]
    want = [h["loss"] for h in full]
    assert got == want, "resumed trajectory differs from the uninterrupted run (bit-exact on CPU)"


def test_resume_with_another_lora_rank_fails_before_compiling(uninterrupted):
    from crab_jax.checkpoints.run import CheckpointMismatch
    from crab_jax.training.loop import train

    workdir, _ = uninterrupted
    with pytest.raises(CheckpointMismatch, match=r"model\.lora\.r: 4 -> 2"):
        train(small_config(**{"model.lora.r": 2}), workdir)


def test_unknown_config_key_is_named():
    from crab_jax.config import schema as base
    from crab_jax.config.check import check_config

    ref = base.get_config().to_dict()
    bad = small_config().to_dict()
    bad["optim"]["learning_rate"] = 1e-3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['optim.learning_rate'\]"):
        check_config(bad, ref)
    with pytest.raises(AttributeError, match="trian"):
        small_config().trian = 1  # the configs are locked: a typo cannot add a key


def test_indivisible_batch_fails_before_compiling():
    from crab_jax.training.setup import build_setup

    with pytest.raises(ValueError, match="global_batch=6 is not divisible by train.micro_batches=4"):
        build_setup(small_config(**{"train.global_batch": 6, "train.micro_batches": 4}))


def test_cli_rejects_unknown_override(tmp_path):
    import subprocess
    import sys

    from tests.train_helpers import REPO

    proc = subprocess.run([sys.executable, "-m", "crab_jax.train", "--workdir", str(tmp_path),
                           "--config.train.nonexistent=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "nonexistent" in proc.stderr


def test_warmup_decay_schedule_matches_deepspeed_formula():
    import math

    from crab_jax.training.optimizer import make_schedule

    total, lr = 1000, 1e-4
    sched = make_schedule("warmup_decay_log", lr, total, 0.03)
    w = 30
    assert float(sched(0)) == 0.0
    assert math.isclose(float(sched(9)), lr * math.log(10) / math.log(w), rel_tol=1e-5)
    assert math.isclose(float(sched(w)), lr, rel_tol=1e-5)
    assert math.isclose(float(sched(500)), lr * (total - 500) / (total - w), rel_tol=1e-5)
    cos = make_schedule("cosine", lr, total, 0.03)
    assert math.isclose(float(cos(15)), lr * 0.5, rel_tol=1e-5) and float(cos(total)) < 1e-12


def test_random_batches_resume_from_state():
    from crab_jax.families.crab.batch_spec import BatchSpec, check_batch, make_random_batches
    from crab_jax.families.crab.presets import tiny_crab_config

    cfg = tiny_crab_config()
    spec = BatchSpec(batch=2, seq_len=48, frame_slots=3, audio_slots=2, fbank_frames=32, image_size=56)
    it = make_random_batches(spec, cfg, seed=3)
    next(it)
    state = it.get_state()
    want = next(it)
    again = make_random_batches(spec, cfg, seed=3)
    again.set_state(state)
    got = next(again)
    check_batch(got, spec, len(cfg.mask_token_ids))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    labelled = got["labels"] != -100
    assert labelled.any() and (got["media_index"][labelled] == -1).all(), "labels must sit on text only"
