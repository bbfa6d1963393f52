"""A pretraining stage started from the base LLaMA / CLIP / BEATs files only (``to-jax --llama
--clip --beats``, as a user starts the original's P1 / P2): the modules the stage never runs
(the other media's projector and encoder, the seg module without the seg branch) need not be
in the converted checkpoint; a frozen module it does run must be, and the error names it."""

from __future__ import annotations

import dataclasses
import shutil

import jax
import numpy as np
import pytest

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.converted import ConvertedCheckpointError
from crab_jax.cli.convert_weights.cli import main
from crab_jax.families.crab import config_io, presets
from crab_jax.families.crab.convert.crab_config import crab_config_from_original
from crab_jax.families.crab.recipes import apply_stage
from crab_jax.config.sections import RunConfig
from crab_jax.models.state_dict import flat_leaves
from crab_jax.parallel.mesh import to_global
from crab_jax.training.setup import build_setup, initial_state, unused_modules
from crab_jax.training.step import batch_shardings, jit_train_step, make_train_step
from tests.train_helpers import small_config

pytestmark = pytest.mark.parity

EMBED = "llm.model.embed_tokens.weight"
HEAD = "llm.lm_head.weight"


@pytest.fixture(scope="module")
def base_weights(fixtures_dir, manifest, tmp_path_factory):
    """``(W, its flat arrays)``: crab_full's LLaMA folder, CLIP folder and BEATs .pt converted alone."""
    f = fixtures_dir / "crab_full"
    taps = manifest["fixtures"]["crab_full"]["config"]["select_layer_list"]
    out = tmp_path_factory.mktemp("base") / "w"
    assert main([str(a) for a in ["to-jax", "--out", out, "--llama", f / "llama_hf", "--clip", f / "clip_vision",
                                  "--beats", f / "beats_tiny.pt", "--bert-config", f / "bert_config",
                                  "--select-layers", ",".join(map(str, taps))]]) == 0
    return out, orbax_io.restore_flat(out)


def stage_model_config(w, fixtures_dir, manifest, run: RunConfig):
    """The fixture's Crab sizes (projectors, seg module, added tokens: the manifest's), with W's
    LLaMA / CLIP / BEATs sections and the run's options."""
    c = manifest["fixtures"]["crab_full"]["config"]
    sd = open_tensors(fixtures_dir / "crab_full" / "full_state_dict.safetensors")
    ref = crab_config_from_original(
        {k: sd.shape(k) for k in sd}, llama_config=c["llama_config"], clip_config=c["clip_vision_config"],
        beats_cfg=c["beats_cfg"], bert_config=c["bert_config"], select_layer_list=c["select_layer_list"],
        select_feature=c["select_feature"], special_token_ids=c["special_token_ids"],
        pad_token_id=c["pad_token_id"], lora=None, seg=c["seg"])
    sections = config_io.sections_from_json(config_io.read_json(w))
    assert sections["llama"].vocab_size == c["vocab_before_mm_tokens"]  # the base vocabulary: no added rows
    llama = dataclasses.replace(sections["llama"], vocab_size=c["vocab_after_mm_tokens"])
    cfg = dataclasses.replace(ref, llama=llama, clip=sections["clip"], beats=sections["beats"])
    return presets.apply_run_options(cfg, run.model)


def stage_config(stage: str, w, **overrides):
    c = small_config(**{"model.init_checkpoint": str(w), "data.frame_slots": 2, "data.audio_slots": 2,
                        "data.seq_len": 64, **overrides})
    apply_stage(c, stage)
    c.data.tasks = tuple(c.data.tasks)
    c.train.global_batch, c.train.num_steps, c.model.vocab_pad_multiple = 2, 1, 8
    return c


def start(stage, w, fixtures_dir, manifest):
    config = stage_config(stage, w)
    run = RunConfig.from_config(config)
    setup, _, _ = build_setup(config, model_cfg=stage_model_config(w, fixtures_dir, manifest, run), steps=1)
    return config, run, setup, initial_state(config, setup)


STAGES = {  # stage -> (a module it runs that W holds, the modules it never runs)
    "pretrain_visual": ("visual_encoder", ("audio_encoder", "al_projector", "seg_module")),
    "pretrain_audio": ("audio_encoder", ("visual_encoder", "vl_projector", "seg_module")),
}


@pytest.fixture(scope="module")
def started(base_weights, fixtures_dir, manifest):
    """Stage -> ``(run, setup, initial state)``, built on first use."""
    w, _ = base_weights
    cache = {}

    def get(stage):
        if stage not in cache:
            _, run, setup, state = start(stage, w, fixtures_dir, manifest)
            cache[stage] = run, setup, state
        return cache[stage]

    return get


@pytest.mark.slow  # the seed's initialisation of a whole (tiny) Crab: ~40 s on 2 busy cores
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_pretraining_stage_starts_from_the_base_files(base_weights, started, stage):
    w, flat = base_weights
    runs, unused = STAGES[stage]
    run, setup, state = started(stage)
    assert set(unused) <= set(unused_modules(run, setup.family))
    assert any(k.startswith(runs + ".") for k in flat)
    params, frozen = flat_leaves(state.params), flat_leaves(state.frozen)
    vocab = setup.model_cfg.llama.vocab_size
    for name, value in flat.items():  # every weight W holds, where the run has it (no scanned layers here)
        got = np.asarray(params.get(name, frozen.get(name)))
        if name in (EMBED, HEAD):  # the base rows; the added tokens' rows start fresh
            axis = 0 if name == EMBED else 1
            added = np.take(got, np.arange(value.shape[axis], vocab), axis=axis)
            assert name in params and np.std(added) > 0, f"{name}: the added tokens' rows are not initialised"
            got = np.take(got, np.arange(value.shape[axis]), axis=axis)
        np.testing.assert_array_equal(got, value.astype(got.dtype), err_msg=name)


@pytest.mark.slow  # compiles a train step (~1 min on 2 busy cores)
def test_pretraining_stage_takes_a_step(started):
    run, setup, state = started("pretrain_visual")
    spec = setup.family.batch.spec(run.data, setup.model_cfg, int(run.train.global_batch))
    shapes = {k: s for k, (s, _) in setup.family.batch.shapes(spec, setup.model_cfg).items()}
    step = jit_train_step(setup, make_train_step(setup, micro_batches=1, with_seg=False, num_tasks=len(run.data.tasks),
                                                 router_groups=1), shapes)
    batch = next(setup.family.batch.random_batches(spec, setup.model_cfg, 0, tasks=run.data.tasks))
    before = np.asarray(flat_leaves(state.params)[EMBED]).copy()
    new_state, aux = step(state, to_global(batch, batch_shardings(shapes, setup.mesh)))
    assert np.isfinite(float(jax.device_get(aux["loss"]))) and int(new_state.step) == 1
    assert not np.array_equal(np.asarray(flat_leaves(new_state.params)[EMBED]), before)


@pytest.mark.parametrize("stage,module", [("pretrain_visual", "visual_encoder"), ("pretrain_audio", "audio_encoder")])
def test_missing_module_the_stage_runs_is_named(base_weights, fixtures_dir, manifest, tmp_path, stage, module):
    w, flat = base_weights
    partial = tmp_path / "w"
    orbax_io.save_params(partial, {k: v for k, v in flat.items() if not k.startswith(module + ".")})
    shutil.copy(w / config_io.CONFIG_FILE, partial / config_io.CONFIG_FILE)
    with pytest.raises(ConvertedCheckpointError, match=f"weights of module\\(s\\) this run uses are missing: {module} "):
        start(stage, partial, fixtures_dir, manifest)
