"""Crab+ through the shared trainer: ``configs/crab_plus_tiny.py`` (random batches, I-LoRA only).

* the trainable set is exactly the ``lora_A`` / ``lora_B`` / ``lora_route`` leaves of the LLM,
  vision and audio towers; after a few steps every one of them moved and every frozen weight
  is bit-identical (the train step itself, :func:`crab_jax.training.step.make_train_step`);
* ``run_training`` on the config: finite losses that fall on the cycled batches, per-task
  router usage in the metrics, checkpoints; a run stopped at a checkpoint and resumed gives
  the uninterrupted run's losses.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests.train_helpers import REPO, apply_overrides, compile_cache

STEPS, EVERY = 6, 3
TOWERS = ("model", "visual", "audio_tower")
LORA_LEAVES = ("lora_A", "lora_B", "lora_route")

pytestmark = pytest.mark.slow  # ~30 s on 2 cores: three short runs + one step program


def tiny_config(**overrides):
    """``configs/crab_plus_tiny.py`` shortened: batch 4, STEPS steps, a checkpoint every EVERY."""
    from crab_jax.config.loader import load_config_file

    c = load_config_file(str(REPO / "configs" / "crab_plus_tiny.py"))
    c.train.global_batch = 4
    c.train.num_steps = STEPS
    c.checkpoint.every_steps = EVERY
    c.checkpoint.async_save = False
    c.metrics.log_every = 1
    c.metrics.tensorboard = False
    c.metrics.progress_bar = False
    return apply_overrides(c, overrides)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with compile_cache(tmp_path_factory.mktemp("jax_cache_crab_plus")):
        yield


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_only_the_ilora_leaves_of_the_three_towers_train(cache):
    from crab_jax.data.sources import train_iterator
    from crab_jax.parallel.mesh import to_global
    from crab_jax.training.setup import build_setup, initial_state, resolve, run_model_config
    from crab_jax.training.step import batch_shardings, jit_train_step, make_train_step

    run, family = resolve(tiny_config())
    cfg = run_model_config(run, family)
    setup, _, _ = build_setup(run, model_cfg=cfg)
    paths = setup.trainable_paths
    assert {p.rsplit(".", 1)[1] for p in paths} == set(LORA_LEAVES)
    assert {p.split(".", 1)[0] for p in paths} == set(TOWERS)
    # every adapter leaf of the model is trainable, nothing else is
    frozen_paths = list(flat(setup.abstract.frozen))
    assert frozen_paths and not any("lora_" in p for p in frozen_paths)

    data = train_iterator(run, family, cfg, None, progress=False)
    local = next(data)
    shapes = {k: np.shape(v) for k, v in local.items()}
    batch = to_global(local, batch_shardings(shapes, setup.mesh))
    step = jit_train_step(setup, make_train_step(setup, micro_batches=1, with_seg=False, num_tasks=len(run.data.tasks),
                                                 router_groups=int(run.metrics.router_layer_groups)), shapes)
    state = initial_state(run, setup)
    params0, frozen0 = flat(state.params), flat(state.frozen)
    for _ in range(3):  # lora_B starts at 0: A and the router get gradients from the second step on
        state, aux = step(state, batch)
    params1, frozen1 = flat(state.params), flat(state.frozen)
    assert np.isfinite(float(aux["loss"]))
    unchanged = [k for k in params0 if np.array_equal(params0[k], params1[k])]
    assert not unchanged, f"I-LoRA leaves that did not train: {unchanged}"
    changed = [k for k in frozen0 if not np.array_equal(frozen0[k], frozen1[k])]
    assert not changed, f"frozen weights that moved: {changed}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
    """An uninterrupted run, and the same run stopped at its first checkpoint then resumed."""
    from crab_jax.training.loop import run_training

    tmp = tmp_path_factory.mktemp("crab_plus_train")
    full = run_training(tiny_config(), tmp / "full")
    first = run_training(tiny_config(**{"train.stop_after_steps": EVERY}), tmp / "resumed")
    second = run_training(tiny_config(), tmp / "resumed")
    return tmp, full, first, second


def test_loss_is_finite_and_falls_on_the_cycled_batches(runs):
    _, full, _, _ = runs
    losses = [h["loss"] for h in full.history]
    assert [h["step"] for h in full.history] == list(range(1, STEPS + 1))
    assert all(np.isfinite(losses))
    # num_distinct = 2: steps 1, 3, 5 see the same batch
    same_batch = losses[0::2]
    assert same_batch[-1] < same_batch[0] - 0.01, same_batch


def test_router_usage_is_logged_per_task_group_and_head(runs):
    tmp, full, _, _ = runs
    from crab_jax.config.loader import load_config_file

    c = load_config_file(str(REPO / "configs" / "crab_plus_tiny.py"))
    heads, groups = int(c.model.lora.num_heads), int(c.metrics.router_layer_groups)
    lines = [json.loads(x) for x in (tmp / "full" / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    seen = [t for t in c.data.tasks if f"router/{t}/group0/head0" in last]
    assert seen, sorted(last)
    for task in seen:
        for g in range(groups):
            gates = [last[f"router/{task}/group{g}/head{h}"] for h in range(heads)]
            assert sum(gates) == pytest.approx(1.0, abs=1e-4) and min(gates) > 0.0, (task, g, gates)
    assert f"router/{seen[0]}/group{groups}/head0" not in last  # negative control: no extra group


def test_checkpoint_and_resume_reproduce_the_uninterrupted_run(runs):
    from crab_jax.checkpoints.run import Checkpointer

    tmp, full, first, second = runs
    assert [h["step"] for h in first.history] == list(range(1, EVERY + 1))
    assert [h["step"] for h in second.history] == list(range(EVERY + 1, STEPS + 1))
    ckpt = Checkpointer(tmp / "resumed" / "checkpoints", async_save=False)
    try:
        assert ckpt.latest_step() == STEPS
        assert ckpt.read_meta(STEPS)["data"]["position"] == STEPS
    finally:
        ckpt.close()
    resumed = [h["loss"] for h in first.history + second.history]
    np.testing.assert_allclose(resumed, [h["loss"] for h in full.history], rtol=1e-6)


def _one_step_loss(overrides: dict, rows=None) -> float:
    """The loss of one train step of ``tiny_config(**overrides)`` on the first random batch
    (optionally only its ``rows``), from the initial state."""
    from crab_jax.data.sources import train_iterator
    from crab_jax.parallel.mesh import to_global
    from crab_jax.training.setup import build_setup, initial_state, resolve, run_model_config
    from crab_jax.training.step import batch_shardings, jit_train_step, make_train_step

    run, family = resolve(tiny_config(**{"train.global_batch": 4, **overrides}))
    local = next(train_iterator(run, family, run_model_config(run, family), None, progress=False))
    if rows is not None:
        local = {k: np.asarray(v)[rows] for k, v in local.items()}
        run, family = resolve(tiny_config(**{**overrides, "train.global_batch": len(rows)}))
    setup, _, _ = build_setup(run, model_cfg=run_model_config(run, family))
    shapes = {k: np.shape(v) for k, v in local.items()}
    step = jit_train_step(setup, make_train_step(setup, micro_batches=int(run.train.micro_batches), with_seg=False,
                                                 num_tasks=len(run.data.tasks),
                                                 router_groups=int(run.metrics.router_layer_groups)), shapes)
    _, aux = step(initial_state(run, setup), to_global(local, batch_shardings(shapes, setup.mesh)))
    return float(aux["loss"])


def test_gradient_accumulation_splits_every_batch_array_by_row(cache):
    """``train.micro_batches = 2``: micro-batch j takes rows j, j + 2 of EVERY batch array —
    the M-RoPE ``position_ids [b, 3, S]`` included — so its loss is the mean of the two halves'."""
    same = {"model.lora.dropout": 0.0}
    accumulated = _one_step_loss({**same, "train.micro_batches": 2})
    halves = [_one_step_loss(same, rows=[j, j + 2]) for j in (0, 1)]
    assert accumulated == pytest.approx(np.mean(halves), rel=1e-5), (accumulated, halves)
    assert abs(halves[0] - halves[1]) > 1e-4  # the halves differ, so a wrong split would show
