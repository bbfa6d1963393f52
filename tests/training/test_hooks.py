"""The evaluation hook: every process evaluates (generation is collective), only process 0 writes."""

from __future__ import annotations

import json

import pytest
from etils import epath

from crab_jax.training.hooks import EvalHook
from crab_jax.training.metric_writer import MetricWriter

RESULTS = {"s4/J_mIoU": {"mean": 0.25, "n": 4}, "s4/unparsable": {"mean": 0.5, "n": 4}}


@pytest.mark.parametrize("main_process", [True, False])
def test_every_process_evaluates_and_only_the_main_one_writes(tmp_path, main_process):
    workdir = epath.Path(tmp_path)
    calls = []

    def evaluate(state):
        calls.append(state)
        return RESULTS

    writer = MetricWriter(workdir, enabled=main_process, tensorboard=False)
    hook = EvalHook(evaluate, every_steps=2, at_end=True, workdir=workdir, writer=writer,
                    headline={"s4": ("J_mIoU",)}, main_process=main_process)
    for step in (1, 2, 3):
        hook.after_step(step, f"state{step}", {}, last=False, leaving=False)
    hook.at_end(3, "state3", finished=True)
    writer.close()
    assert calls == ["state2", "state3"]  # every process ran both evaluations
    assert [s for s, _ in hook.evals] == [2, 3]
    written = tmp_path / "eval.jsonl"
    if main_process:
        lines = [json.loads(x) for x in written.read_text().splitlines()]
        assert [x["step"] for x in lines] == [2, 3] and lines[0]["results"] == RESULTS
        scalars = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert scalars[0]["eval/s4/J_mIoU"] == 0.25
    else:
        assert not written.exists() and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("main_process", [True, False])
def test_evaluation_images_are_drawn_everywhere_and_written_to_tensorboard_by_the_main_process(tmp_path, main_process):
    import numpy as np

    from tests.train_helpers import tensorboard_images

    workdir = epath.Path(tmp_path)
    drawn = []

    def images(state):
        drawn.append(state)
        return {"routes/head_task": np.full((60, 80, 3), 200, np.uint8)}

    writer = MetricWriter(workdir, enabled=main_process, tensorboard=True)
    hook = EvalHook(lambda state: RESULTS, every_steps=2, at_end=True, workdir=workdir, writer=writer,
                    headline={}, main_process=main_process, images=images)
    for step in (1, 2, 3):
        hook.after_step(step, f"state{step}", {}, last=False, leaving=False)
    hook.at_end(3, "state3", finished=True)
    writer.close()
    assert drawn == ["state2", "state3"]
    if main_process:
        assert tensorboard_images(tmp_path / "tensorboard") == {"routes/head_task": [(2, 60, 80), (3, 60, 80)]}
    else:
        assert not (tmp_path / "tensorboard").exists()


def test_route_figures_is_a_declared_resume_safe_metrics_key():
    from crab_jax.config.changes import is_safe
    from crab_jax.config.schema import get_config

    assert get_config().metrics.route_figures is True
    assert is_safe("metrics.route_figures")


@pytest.mark.parametrize("off", ["metrics.route_figures", "metrics.tensorboard"])
def test_route_images_are_not_drawn_when_switched_off(off):
    from crab_jax.config.schema import get_config
    from crab_jax.config.sections import RunConfig
    from crab_jax.evaluation.heldout import route_images_state
    from tests.train_helpers import apply_overrides

    run = RunConfig.from_config(apply_overrides(get_config(), {off: False}))
    # Nothing is touched: no model is merged from the (absent) setup and state.
    assert route_images_state(run, None, None, None, None) == {}
