"""The study config (its own schema, split off the training config) and the plan of runs."""

from __future__ import annotations

import pytest

from crab_jax.config.check import ConfigError
from crab_jax.config.loader import load_config_file
from crab_jax.study.plan import plan_runs
from crab_jax.study.schema import VARIANTS, load_study_config
from tests.train_helpers import REPO

TINY = str(REPO / "configs" / "study_tiny.py")
CRAB_PLUS_TINY = str(REPO / "configs" / "study_crab_plus_tiny.py")


@pytest.fixture(scope="module")
def tiny():
    return load_study_config(TINY, ["study.tasks=('avqa','ave')", "study.seeds=(0,1)", "train.num_steps=7"])


def test_overrides_reach_both_parts_and_the_training_config_has_no_study_section(tiny):
    training, study = tiny
    assert "study" not in training and training.train.num_steps == 7
    assert study.tasks == ("avqa", "ave") and study.seeds == (0, 1) and study.variants == VARIANTS


def test_plan_has_one_single_run_per_task_and_seed_and_one_multi_run_per_variant_and_seed(tiny):
    training, study = tiny
    runs = plan_runs(training, study)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 2 * (2 + len(VARIANTS))
    assert "single-lora-avqa-s1" in names and "multi-ilora-s0" in names and "multi-lora_budget-s1" in names
    for r in runs:
        assert r.overrides["seed"] == r.overrides["data.seed"] == r.seed
        assert r.overrides["data.tasks"] == r.tasks == (("avqa", "ave") if r.kind == "multi" else r.tasks)
        assert not {"train.num_steps", "train.global_batch", "optim.lr"} & set(r.overrides)  # same for every run
    assert [r.tasks for r in runs if r.kind == "single" and r.seed == 0] == [("avqa",), ("ave",)]


def test_data_matched_multi_task_models_train_tasks_times_the_steps():
    training, study = load_study_config(TINY, ["study.tasks=('avqa','ave','s4')", "study.seeds=(0,)",
                                               "train.num_steps=7", "study.multi_steps='data'"])
    for r in plan_runs(training, study):
        assert r.overrides.get("train.num_steps") == (3 * 7 if r.kind == "multi" else None), r


def test_variants_set_heads_rank_and_a_frozen_base(tiny):
    training, study = tiny
    r, alpha, k = training.model.lora.r, training.model.lora.alpha, training.model.lora.num_heads
    assert k >= 2
    by_variant = {run.variant: run.overrides for run in plan_runs(training, study) if run.kind == "multi"}
    lora_keys = lambda o: (o["model.lora.num_heads"], o["model.lora.r"], o["model.lora.alpha"])
    assert lora_keys(by_variant["lora"]) == (1, r, alpha)
    assert lora_keys(by_variant["lora_budget"]) == (1, k * r, k * alpha)   # same rank budget and alpha / r
    assert lora_keys(by_variant["ilora"]) == (k, r, alpha)
    shared = tuple(study.shared_trainable)
    for variant, o in by_variant.items():
        expected = shared if variant == "floor" else tuple(study.adapter_trainable) + shared
        assert o["trainable"] == expected
        assert not any(p.startswith(r"^llm\.") and "lm_head" not in p for p in o["trainable"])  # base LLM frozen


@pytest.mark.parametrize("override, key", [
    ("study.seedz=(0,)", "study.seeds"),          # a misspelt study key: the closest one
    ("study.variants=('lora','dora')", "study.variants"),
    ("study.seeds=(0,0)", "study.seeds"),
    ("study.tasks=('avqa',)", "study.tasks"),
    ("study.single_variant='big'", "study.single_variant"),
    ("study.noise_se=-1.0", "study.noise_se"),
    ("study.multi_steps='more'", "study.multi_steps"),
    ("train.num_stepz=3", "train.num_steps"),     # a training key: the training schema's message
    ("model.lora.num_heads=1", "model.lora.num_heads"),
])
def test_bad_keys_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_study_config(TINY, [override])
    message = str(e.value)
    assert "\n" not in message and key in message


def test_a_training_config_without_a_study_section_is_refused():
    with pytest.raises(ConfigError, match="no 'study' section"):
        load_study_config(str(REPO / "configs" / "tiny.py"))


@pytest.mark.parametrize("name, family_name", [("study_tpu_v4.py", "crab"), ("study_crab_plus_tpu_v4.py", "crab_plus")])
def test_the_tpu_study_configs_load_and_study_their_training_configs_tasks(name, family_name):
    training, study = load_study_config(str(REPO / "configs" / name))
    base = load_config_file(str(REPO / "configs" / name.replace("study_", "")))
    assert training.model.family == family_name and study.tasks == tuple(base.data.tasks)
    assert training.train.num_steps > 0 and training.model.lora.num_heads >= 2
    runs = plan_runs(training, study)
    assert len(runs) == len(study.seeds) * (len(study.tasks) + len(study.variants))
    # Crab trains its projectors in every run; Crab+'s recipe only its adapters: an untrained floor.
    assert all(r.trains == (r.variant != "floor" or bool(study.shared_trainable)) for r in runs)
    assert bool(study.shared_trainable) == (family_name == "crab")


def test_an_empty_shared_set_makes_the_floor_the_untrained_base_and_changes_no_other_run():
    args = ["study.tasks=('avqa','ave')", "study.seeds=(0,)"]
    with_shared = {r.name: r for r in plan_runs(*load_study_config(CRAB_PLUS_TINY, args))}
    without = {r.name: r for r in plan_runs(*load_study_config(CRAB_PLUS_TINY, [*args, "study.shared_trainable=()"]))}
    assert sorted(with_shared) == sorted(without)
    for name, run in without.items():
        assert run.trains == (run.variant != "floor")
        # An untrained floor names the adapters (the model needs a trainable set; their B is zero).
        adapters = tuple(load_study_config(CRAB_PLUS_TINY, args)[1].adapter_trainable)
        assert run.overrides["trainable"] == adapters
        assert {k: v for k, v in run.overrides.items() if k != "trainable"} == \
            {k: v for k, v in with_shared[name].overrides.items() if k != "trainable"}
    assert with_shared["multi-floor-s0"].trains and with_shared["multi-floor-s0"].overrides["trainable"] == (r"^lm_head\.",)


@pytest.mark.parametrize("config", [pytest.param(TINY, id="crab", marks=pytest.mark.slow),  # ~15 s abstract build
                                    pytest.param(CRAB_PLUS_TINY, id="crab_plus")])
def test_every_runs_trainable_set_is_its_adapters_and_the_shared_set_of_the_model(config):
    """Each planned run's ``trainable`` regexes (of the tiny study configs) all select parameters of
    the model that run builds, and only adapters plus the shared set (the rest is the frozen base)."""
    import re

    from flax import nnx

    from crab_jax.models.state_dict import path_str
    from crab_jax.study.transfer import set_keys
    from crab_jax.training.setup import resolve
    from crab_jax.training.state import split_model
    from crab_jax.training.trainable import check_patterns_match

    # No seg branch (none trains in a study; Crab's takes most of the abstract build's time).
    training, study = load_study_config(config, ["study.tasks=('avqa','ave')", "study.seeds=(0,)",
                                                 "model.seg_branch=False"])
    shared = [re.compile(p) for p in study.shared_trainable]
    plan = plan_runs(training, study)
    # The parameter paths do not depend on the adapters' heads or rank: one abstract model.
    run, family = resolve(set_keys(training, plan[0].overrides))
    cfg = family.model_config(run.model, 64)  # the synthetic word tokenizer's base vocabulary: any size
    model = nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0)))
    for planned in plan:
        run, _ = resolve(set_keys(training, planned.overrides))
        _, params, frozen, _ = split_model(model, run.trainable)
        trained = [path_str(p) for p, _ in nnx.to_flat_state(params)]
        check_patterns_match(run.trainable, trained + [path_str(p) for p, _ in nnx.to_flat_state(frozen)])
        adapters = [p for p in trained if ".lora_" in p]
        assert bool(adapters) == (planned.variant != "floor"), planned.name
        assert all(".lora_" in p or any(rx.search(p) for rx in shared) for p in trained), planned.name
        assert any(p.startswith(family.llm_path + ".") for p in (path_str(q) for q, _ in nnx.to_flat_state(frozen)))


def test_the_frozen_weights_drawn_after_an_adapter_do_not_depend_on_its_heads_or_rank(tiny):
    """Every run of a seed starts from the same base model: an I-LoRA layer draws the same number
    of keys from the seed whatever its k and r (so the encoders built after the LLM are the same)."""
    import numpy as np
    from flax import nnx

    from crab_jax.models.ilora import ILoRAConfig, ILoRALinear
    from crab_jax.models.layers import Linear

    training, study = tiny
    after = {}
    for run in plan_runs(training, study):
        o = run.overrides
        cfg = ILoRAConfig(r=o["model.lora.r"], alpha=o["model.lora.alpha"], num_heads=o["model.lora.num_heads"])
        rngs = nnx.Rngs(run.seed)
        adapter = ILoRALinear(6, 5, cfg, rngs=rngs)
        base = Linear(5, 4, rngs=rngs)  # drawn after the adapter, as the encoders after the LLM
        assert adapter.lora_B.shape == (cfg.num_heads, cfg.r, 5)
        after.setdefault(run.seed, []).append((np.asarray(adapter.weight[...]), np.asarray(base.weight[...])))
    for seed, weights in after.items():
        for w, b in weights[1:]:
            np.testing.assert_array_equal(w, weights[0][0])
            np.testing.assert_array_equal(b, weights[0][1])
    assert not np.array_equal(after[0][0][1], after[1][0][1])  # a different seed draws different weights
