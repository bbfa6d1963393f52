"""``model.init_checkpoint``: a converter output (crab_full's user files -> to-jax) read into a
run whose layout differs from the converter's (scanned layers, padded vocabulary, bf16 frozen
weights), and trained from it, resume included."""

from __future__ import annotations

import types

import ml_dtypes
import numpy as np
import pytest

from crab_jax.checkpoints.converted import ConvertedCheckpointError, load_run_weights, plan_load
from crab_jax.config.sections import RunConfig
from crab_jax.models.state_dict import flat_leaves
from tests.train_helpers import compile_cache, small_config
from crab_jax.checkpoints.convert import orbax_io

pytestmark = pytest.mark.parity

LAYER = "llm.model.layers"


def vocab_of(setup) -> tuple[int, int]:
    """The run's LLM ``(vocab_size, padded_vocab_size)``, as the loader takes it."""
    return setup.family.vocab_sizes(setup.model_cfg)


def sds(*shape):
    return types.SimpleNamespace(shape=shape)


def test_plan_stacks_layers_pads_vocab_and_names_every_problem():
    saved = {f"{LAYER}.{i}.q.weight": ((4, 6), "f") for i in range(3)}
    saved["emb.weight"] = ((10, 4), "f")
    plan = plan_load(saved, {f"{LAYER}.q.weight": sds(3, 4, 6), "emb.weight": sds(16, 4)}, vocab=(10, 16))
    assert plan == {f"{LAYER}.q.weight": [f"{LAYER}.{i}.q.weight" for i in range(3)], "emb.weight": ["emb.weight"]}
    with pytest.raises(ConvertedCheckpointError) as e:  # padding is for the vocabulary dims only
        plan_load(saved, {f"{LAYER}.q.weight": sds(3, 4, 7), "emb.weight": sds(16, 4)}, vocab=(10, 16))
    assert "q.weight: expected shape (4, 7), found (4, 6)" in str(e.value)
    with pytest.raises(ConvertedCheckpointError) as e:
        plan_load(saved, {f"{LAYER}.q.weight": sds(2, 4, 6), "lm_head.weight": sds(4, 16)}, vocab=(10, 16))
    msg = str(e.value)
    assert "expected 2 stacked layers" in msg and "the checkpoint has layer(s) [0, 1, 2]" in msg
    assert "missing lm_head.weight (expected shape (4, 16))" in msg and "unexpected emb.weight (10, 4)" in msg
    assert plan_load(saved, {f"{LAYER}.q.weight": sds(3, 4, 6), "emb.weight": sds(10, 4), "new.lora": sds(2)},
                     optional=frozenset({"new.lora"})).keys() == {f"{LAYER}.q.weight", "emb.weight"}


def test_plan_grows_trainable_vocab_rows_only_and_names_missing_modules():
    """A base LLaMA's embeddings (fewer rows than the run's vocabulary) load into a trainable
    weight (the caller fills the added rows), never into a frozen one; missing weights are
    summed up by module."""
    saved = {"llm.embed.weight": ((7, 4), "f"), "enc.a.weight": ((2,), "f")}
    wanted = {"llm.embed.weight": sds(16, 4), "enc.a.weight": sds(2), "proj.b.weight": sds(3), "proj.c.weight": sds(3)}
    with pytest.raises(ConvertedCheckpointError) as e:
        plan_load(saved, wanted, vocab=(10, 16))
    msg = str(e.value)
    assert "weights of module(s) this run uses are missing: proj (2 arrays)" in msg
    assert "llm.embed.weight: expected shape (16, 4), found (7, 4) (fewer rows than the run's vocabulary of 10" in msg
    plan = plan_load(saved, wanted, vocab=(10, 16), optional=frozenset({"proj.b.weight", "proj.c.weight"}),
                     growable=frozenset({"llm.embed.weight"}))
    assert plan == {"llm.embed.weight": ["llm.embed.weight"], "enc.a.weight": ["enc.a.weight"]}
    with pytest.raises(ConvertedCheckpointError, match="expected shape"):  # more rows than the vocabulary: no
        plan_load({"llm.embed.weight": ((12, 4), "f")}, {"llm.embed.weight": sds(16, 4)}, vocab=(10, 16),
                  growable=frozenset({"llm.embed.weight"}))


def run_config(ckpt_dir, cfg_json, steps: int, **overrides):
    vocab = cfg_json["llama"]["vocab_size"]
    multiple = next(m for m in (64, 48, 40) if vocab % m)  # a multiple that really pads
    return small_config(**{
        "model.preset": "checkpoint", "model.init_checkpoint": str(ckpt_dir), "model.scan_layers": True,
        "model.vocab_pad_multiple": multiple, "model.frozen_param_dtype": "bfloat16",
        "model.lora.r": cfg_json["lora"]["r"], "model.lora.num_heads": cfg_json["lora"]["num_heads"],
        "model.lora.alpha": cfg_json["lora"]["alpha"], "model.lora.targets": tuple(cfg_json["lora"]["targets"]),
        "data.frame_slots": 2, "train.num_steps": steps, "checkpoint.every_steps": 2, **overrides})


@pytest.fixture(scope="module")
def converted(converted_crab):
    from crab_jax.families.crab import config_io

    out, _ = converted_crab
    return out, config_io.read_json(out), orbax_io.restore_flat(out)


@pytest.fixture(scope="module")
def run_setup(converted):
    """The trainer's setup and fresh state of a run configured from the converted folder."""
    from crab_jax.training.loop import build_setup

    out, cfg_json, _ = converted
    setup, _, _ = build_setup(run_config(out, cfg_json, 4), steps=4)
    return setup, setup.init_fn()


def test_run_layout_holds_the_converted_values(converted, run_setup):
    """Every converted array lands bit-exactly (stacked per layer, vocab rows zero-padded,
    frozen cast to bf16) in the trainer's sharded state; nothing is left at its random init."""
    out, cfg_json, flat = converted
    setup, state = run_setup
    params, frozen, fresh = load_run_weights(out, state.params, state.frozen, setup.abstract.params,
                                             setup.abstract.frozen, vocab_of(setup))
    assert fresh == []
    loaded = {**flat_leaves(frozen), **flat_leaves(params)}
    trainable = set(flat_leaves(params))
    assert any(k.startswith(LAYER + ".") and k.count(".") > 3 for k in flat) and setup.model_cfg.llama.scan_layers
    vocab, padded = setup.model_cfg.llama.vocab_size, setup.model_cfg.llama.padded_vocab_size
    assert padded > vocab
    seen = set()
    for name, value in flat.items():
        parts = name.split(".")
        if name.startswith(LAYER + ".") and parts[3].isdigit():
            target, index = ".".join(parts[:3] + parts[4:]), int(parts[3])
            got = np.asarray(loaded[target])[index]
        else:
            target, got = name, np.asarray(loaded[name])
        seen.add(target)
        if np.issubdtype(value.dtype, np.floating):
            want_dtype = np.dtype(np.float32) if target in trainable else np.dtype(ml_dtypes.bfloat16)
        else:  # integer buffers (position ids) keep their dtype
            want_dtype = value.dtype
        assert got.dtype == want_dtype, target
        if got.shape != value.shape:  # the vocabulary dim, padded with zeros
            axis = [i for i, (g, v) in enumerate(zip(got.shape, value.shape)) if g != v]
            assert axis and all(got.shape[i] == padded and value.shape[i] == vocab for i in axis), name
            pad = np.take(got, np.arange(vocab, padded), axis=axis[0])
            assert not np.any(pad.astype(np.float32)), f"{name}: padding rows are not zero"
            got = np.take(got, np.arange(vocab), axis=axis[0])
        np.testing.assert_array_equal(got, value.astype(want_dtype), err_msg=name)
    assert seen == set(loaded)


def test_missing_frozen_weight_is_named(converted, run_setup, tmp_path):
    """A checkpoint without a frozen weight fails before anything is read, naming it; trainable
    weights may be absent (they start fresh)."""
    _, _, flat = converted
    setup, state = run_setup
    frozen_name = next(k for k in flat if k.startswith("audio_encoder."))
    lora_suffix = next(k for k in flat if ".lora_A" in k).split(".", 4)[-1]  # e.g. self_attn.q_proj.lora_A
    no_lora = {k: v for k, v in flat.items() if not k.endswith(lora_suffix)}
    partial = {k: v for k, v in no_lora.items() if k != frozen_name}
    orbax_io.save_params(tmp_path, partial)
    with pytest.raises(ConvertedCheckpointError, match=f"missing {frozen_name}"):
        load_run_weights(tmp_path, state.params, state.frozen, setup.abstract.params, setup.abstract.frozen,
                         vocab_of(setup))
    orbax_io.save_params(tmp_path / "lora_only_missing", no_lora)
    _, _, fresh = load_run_weights(tmp_path / "lora_only_missing", state.params, state.frozen,
                                   setup.abstract.params, setup.abstract.frozen, vocab_of(setup))
    assert fresh == [f"{LAYER}.{lora_suffix}"]
    one_layer_short = {k: v for k, v in flat.items() if k != f"{LAYER}.0.{lora_suffix}"}
    orbax_io.save_params(tmp_path / "one_layer_short", one_layer_short)
    with pytest.raises(ConvertedCheckpointError, match=r"has layer\(s\) \[1"):
        load_run_weights(tmp_path / "one_layer_short", state.params, state.frozen, setup.abstract.params,
                         setup.abstract.frozen, vocab_of(setup))


@pytest.fixture(scope="module")
def trained(converted, tmp_path_factory):
    """Train 4 steps from the converted checkpoint (``full``); the same run stopped after 2 steps
    and rerun (``split``). Returns (full workdir, full history, resumed history)."""
    from crab_jax.training.loop import train

    out, cfg_json, _ = converted
    root = tmp_path_factory.mktemp("runs")
    with compile_cache(root / "cache"):
        full = train(run_config(out, cfg_json, 4), root / "full")
        train(run_config(out, cfg_json, 4, **{"train.stop_after_steps": 2}), root / "split")
        resumed = train(run_config(out, cfg_json, 4), root / "split")
    return root / "full", full, resumed


def test_trains_from_converted_and_resumes_on_its_frozen_weights(trained):
    """The resumed run must rebuild the frozen weights from the converted checkpoint again (not
    from the seed) to reproduce the uninterrupted losses bit for bit."""
    _, full, resumed = trained
    losses = [h["loss"] for h in full]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert [h["step"] for h in resumed] == [3, 4]
    assert [h["loss"] for h in resumed] == losses[2:]


def test_next_stage_starts_from_the_earlier_runs_weights(converted, run_setup, trained):
    """``model.init_from_runs``: a next stage with another trainable set gets the earlier run's
    trained weights, as trainable (projector) or frozen (LoRA, the other projector)."""
    from crab_jax.checkpoints.run import restore_params
    from crab_jax.checkpoints.converted import initial_weights
    from crab_jax.training.loop import build_setup

    out, cfg_json, _ = converted
    full_dir, _, _ = trained
    earlier = flat_leaves(restore_params(full_dir / "checkpoints", run_setup[0].abstract.params))
    config = run_config(out, cfg_json, 4, **{"trainable": (r"^vl_projector\.",),
                                             "model.init_from_runs": (str(full_dir),)})
    setup, _, _ = build_setup(config, steps=4)
    state = setup.init_fn()
    params, frozen, notes = initial_weights(RunConfig.from_config(config).model, setup.abstract, vocab_of(setup),
                                            state.params, state.frozen)
    assert any(str(full_dir) in n for n in notes)
    params, frozen = flat_leaves(params), flat_leaves(frozen)
    assert set(params) < set(earlier) and any(".lora_A" in k for k in frozen)
    for name, value in earlier.items():
        got = np.asarray(params[name] if name in params else frozen[name])
        np.testing.assert_array_equal(got, np.asarray(value).astype(got.dtype), err_msg=name)


def test_run_layout_goes_back_to_the_canonical_one():
    """from-run's inverse of the loader: scanned arrays are split per layer, padded vocab cut back."""
    from crab_jax.checkpoints.convert.run_weights import canonical_run_weights
    from crab_jax.checkpoints.convert.mapping import MappingError

    base = {f"{LAYER}.{i}.q.weight": ((4, 6), np.float32) for i in range(3)}
    base["lm_head.weight"] = ((4, 10), np.float32)
    stacked = np.arange(3 * 4 * 6, dtype=np.float32).reshape(3, 4, 6)
    head = np.arange(4 * 16, dtype=np.float32).reshape(4, 16)
    out = canonical_run_weights({f"{LAYER}.q.weight": stacked, "lm_head.weight": head}, base, 10, source="run")
    assert sorted(out) == sorted(base)
    np.testing.assert_array_equal(out[f"{LAYER}.2.q.weight"], stacked[2])
    np.testing.assert_array_equal(out["lm_head.weight"], head[:, :10])
    with pytest.raises(MappingError) as e:
        canonical_run_weights({f"{LAYER}.q.weight": stacked[:2], "lm_head.weight": head[:3], "x.y": head},
                              base, 10, source="run")
    msg = str(e.value)
    assert "llm.model.layers.q.weight (2, 4, 6): no such weight" in msg
    assert "lm_head.weight: the base has shape (4, 10), the run (3, 16)" in msg and "x.y (4, 16)" in msg


def test_trained_run_goes_back_to_a_converted_checkpoint_and_to_torch(converted, run_setup, trained, fixtures_dir,
                                                                     tmp_path):
    """``from-run``: the run's trained weights (scanned layers, fp32) return to the canonical layout
    over the base; ``to-torch`` then writes Crab's finetune .bin with the original's key set."""
    import torch

    from crab_jax.checkpoints.run import restore_params
    from crab_jax.cli.convert_weights.cli import main
    from crab_jax.checkpoints.convert.inspection import inspect_path
    from crab_jax.families import get as get_family

    out, _, base_flat = converted
    full_dir, _, _ = trained
    trained_flat = flat_leaves(restore_params(full_dir / "checkpoints", run_setup[0].abstract.params))
    listing = inspect_path(str(full_dir), get_family("crab").converter, show_tensors=True)
    assert "training-run checkpoint" in listing and f"{len(trained_flat)} arrays" in listing
    assert all(name in listing for name in trained_flat)
    merged_dir = tmp_path / "ft"
    assert main(["from-run", str(full_dir), "--base", str(out), "--out", str(merged_dir), "--dtype", "fp32"]) == 0
    merged = orbax_io.restore_flat(merged_dir)
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in base_flat.items()}
    changed = set()
    for name, value in trained_flat.items():
        value = np.asarray(value)
        parts = {name: value} if name in merged else {
            f"{LAYER}.{i}.{name[len(LAYER) + 1:]}": value[i] for i in range(value.shape[0])}
        for key, part in parts.items():
            np.testing.assert_array_equal(merged[key], part.astype(np.float32), err_msg=key)
            changed.add(key)
    for key in set(base_flat) - changed:
        np.testing.assert_array_equal(merged[key], base_flat[key].astype(merged[key].dtype), err_msg=key)
    assert any(not np.array_equal(merged[k], base_flat[k]) for k in changed)  # the run did train them
    reference = fixtures_dir / "crab_full" / "finetune_weights.bin"
    exported_path = tmp_path / "finetune_weights.bin"
    assert main(["to-torch", str(merged_dir), "--format", "crab-bin", "--subset", "finetune",
                 "--out", str(exported_path)]) == 0
    exported = torch.load(exported_path, weights_only=True)
    original = torch.load(reference, weights_only=True)
    assert sorted(exported) == sorted(original)
    assert any(not torch.equal(exported[k].float(), original[k].float()) for k in original if "lora" in k)
