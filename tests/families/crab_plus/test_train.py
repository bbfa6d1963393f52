"""Crab+ through the shared trainer: ``configs/crab_plus_tiny.py`` (random batches, I-LoRA only).

* the trainable set is exactly the ``lora_A`` / ``lora_B`` / ``lora_route`` leaves of the LLM,
  vision and audio towers; after a few steps every one of them moved and every frozen weight
  is bit-identical (the train step itself, :func:`crab_jax.training.step.make_train_step`);
* ``run_training`` on the config: finite losses that fall on the cycled batches, per-task
  router usage of each tower (LLM, vision, audio) in the metrics, checkpoints; a run stopped at
  a checkpoint and resumed gives the uninterrupted run's losses;
* one train step's router usage per tower equals numpy over the gates the forward recorded,
  restricted to the batch's real tokens / patches / conv frames, and padded media leave it
  unchanged.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests.train_helpers import REPO, apply_overrides, compile_cache

STEPS, EVERY = 6, 3
TOWERS = ("model", "visual", "audio_tower")
# Each tower's part of the router metric names: router/<task>/<part>group<g>/head<h>.
ROUTER_NAMES = {"model": "", "visual": "vision/", "audio_tower": "audio/"}
LORA_LEAVES = ("lora_A", "lora_B", "lora_route")

pytestmark = pytest.mark.slow  # ~30 s on 2 cores: three short runs + one step program


def tiny_config(**overrides):
    """``configs/crab_plus_tiny.py`` shortened: batch 4, STEPS steps, a checkpoint every EVERY."""
    from crab_jax.config.loader import load_config_file

    c = load_config_file(str(REPO / "configs" / "crab_plus_tiny.py") + ":random")
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

    c = load_config_file(str(REPO / "configs" / "crab_plus_tiny.py") + ":random")
    heads, groups = int(c.model.lora.num_heads), int(c.metrics.router_layer_groups)
    lines = [json.loads(x) for x in (tmp / "full" / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    seen = [t for t in c.data.tasks if f"router/{t}/group0/head0" in last]
    assert seen, sorted(last)
    for task in seen:
        for tower in ROUTER_NAMES.values():  # every sample has text, frames and audio
            for g in range(groups):
                gates = [last[f"router/{task}/{tower}group{g}/head{h}"] for h in range(heads)]
                assert sum(gates) == pytest.approx(1.0, abs=1e-4) and min(gates) > 0.0, (task, tower, g, gates)
    assert f"router/{seen[0]}/group{groups}/head0" not in last  # negative control: no extra group
    assert not [k for k in last if k.startswith("router/") and k.split("/")[2] not in ("group0", "group1", "vision",
                                                                                          "audio")]


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


def _numpy_router_usage(gates: dict, batch: dict, cfg, tasks, groups: int) -> dict[str, float]:
    """The router metrics from the recorded gates ``{module path: (gates, ...)}``, by an independent
    reading of the batch: a tower's batch is sample-major (``[b*V, h*w]`` patches, ``[b*C, W]`` conv
    frames, ``[b, S]`` tokens); real rows are the attention mask's tokens, the patches of nonzero
    frame slots, the conv frames ``t < (f - 1) // 2 + 1`` of chunks with ``f`` mel frames."""
    from tests.training.test_metrics import numpy_usage

    b, slots, patches = batch["pixel_slices"].shape[:3]
    frames = batch["audio_chunk_frames"]
    conv = np.where(frames > 0, (frames - 1) // 2 + 1, 0)
    valid = {"model": batch["attention_mask"] > 0,
             "visual": np.repeat(np.abs(batch["pixel_slices"]).sum((2, 3)) > 0, patches, axis=1),
             "audio_tower": (np.arange(cfg.audio.frames_per_chunk)[None, None] < conv[..., None]).reshape(b, -1)}
    depth = {"model": cfg.text.num_hidden_layers, "visual": cfg.vision.depth, "audio_tower": cfg.audio.encoder_layers}
    layers = {tower: [] for tower in TOWERS}
    for path, recorded in gates.items():
        index = [int(p) for prev, p in zip(path, path[1:]) if prev in ("layers", "blocks") and p.isdigit()]
        for g in recorded:
            g = np.asarray(g)
            stack = [(index[0], g)] if index else list(enumerate(g))  # scanned: [L, ...]
            layers[path[0]] += [(layer, x.reshape(b, -1, x.shape[-1])) for layer, x in stack]
    out = {}
    for tower, found in layers.items():
        assert found, f"no I-LoRA gates recorded under {tower}"
        usage = numpy_usage(found, valid[tower], batch["task_id"], len(tasks), depth[tower], groups)
        for (t, g), mean in usage.items():
            out.update({f"router/{tasks[t]}/{ROUTER_NAMES[tower]}group{g}/head{h}": float(v) for h, v in enumerate(mean)})
    return out


def test_router_usage_per_tower_is_the_mean_gate_over_real_rows(cache):
    """One step's router scalars of the LLM, vision and audio towers equal numpy over the gates
    its forward records; new pixels in a padded frame slot and new features in an unused audio
    chunk leave them unchanged, new pixels in a real frame slot do not."""
    from flax import nnx

    from crab_jax.data.sources import train_iterator
    from crab_jax.models.ilora import GATES_INTERMEDIATE
    from crab_jax.training.metrics import summarize
    from crab_jax.training.setup import build_setup, initial_state, resolve, run_model_config
    from crab_jax.training.step import make_train_step

    run, family = resolve(tiny_config(**{"model.lora.dropout": 0.0}))
    cfg = run_model_config(run, family)
    setup, _, _ = build_setup(run, model_cfg=cfg)
    tasks, groups = tuple(run.data.tasks), int(run.metrics.router_layer_groups)
    batch = {k: np.asarray(v) for k, v in next(train_iterator(run, family, cfg, None, progress=False)).items()}
    state = initial_state(run, setup)
    step = jax.jit(make_train_step(setup, micro_batches=1, with_seg=False, num_tasks=len(tasks), router_groups=groups))

    @jax.jit
    def recorded_gates(params, frozen, rng_vars, batch):
        model = setup.merge(params, frozen, rng_vars)
        _, inter = nnx.capture(lambda m: family.forward_loss(m, batch, False), nnx.Intermediate)(model)
        return {tuple(str(p) for p in path): var.get_value() for path, var in nnx.to_flat_state(inter)
                if str(path[-1]) == GATES_INTERMEDIATE}

    def router_metrics(batch):
        _, aux = step(state, batch)
        return {k: v for k, v in summarize(jax.device_get(aux), tasks).items() if k.startswith("router/")}

    got = router_metrics(batch)
    want = _numpy_router_usage(recorded_gates(state.params, state.frozen, state.rng_vars, batch), batch, cfg, tasks,
                               groups)
    assert {k.split("/")[2] for k in got} == {"group0", "group1", "vision", "audio"}
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key

    rng = np.random.default_rng(0)
    free_slot = np.argwhere(np.abs(batch["pixel_slices"]).sum((2, 3)) == 0)
    free_chunk = np.argwhere(batch["audio_chunk_frames"] == 0)
    assert len(free_slot) and len(free_chunk), "the batch needs a padded frame slot and an unused audio chunk"
    padded = {k: v.copy() for k, v in batch.items()}
    (i, v), (j, c) = free_slot[0], free_chunk[0]
    padded["pixel_slices"][i, v] = rng.normal(size=padded["pixel_slices"][i, v].shape)
    padded["audio_chunks"][j, c] = rng.normal(size=padded["audio_chunks"][j, c].shape)
    assert router_metrics(padded) == pytest.approx(got, rel=1e-6, abs=1e-8)

    real = {k: v.copy() for k, v in batch.items()}
    real["pixel_slices"][0, 0] = rng.normal(size=real["pixel_slices"][0, 0].shape)
    moved = router_metrics(real)
    task = tasks[int(batch["task_id"][0])]
    assert moved[f"router/{task}/vision/group0/head0"] != pytest.approx(got[f"router/{task}/vision/group0/head0"],
                                                                         rel=1e-6)
