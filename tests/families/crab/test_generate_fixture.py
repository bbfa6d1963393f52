"""Crab from converted user files vs the original's greedy generation (fixture ``generate/``):
the quick-start prompts (ids exactly the original's), the step logits (the fixture's generated
ids teacher-forced through the model, causal attention: position ``P - 1 + k`` gives step
``k``), and the forced segmentation path (prompt + ``<mask_start> <mask_0..5> <mask_end>``
through the teacher-forced seg forward: logits, binary mask, the PNG the CLI writes, IoU / F).
Every sample, size and tolerance comes from the manifest."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from crab_jax import families
from crab_jax.cli.convert_weights.cli import main as convert_main
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.data.records.quick_start import read_quick_start
from crab_jax.evaluation import mask_files
from crab_jax.evaluation.converted_model import load_converted_model
from crab_jax.metrics import masks as mask_metrics
from crab_jax.evaluation.quick_start import bucket_of, collate_padded, seq_bucket
from crab_jax.models.decoding import prepare_for_inference
from crab_jax.models.losses import IGNORE_INDEX
from tests.cli.test_infer_quick_start import LENGTH_MULTIPLE
from tests.families.crab import generate_fixture_helpers as G
from tests.families.crab.generation_helpers import reference_forward

pytestmark = [pytest.mark.parity, pytest.mark.slow]
FAMILY = families.get("crab")
NEAR_ZERO_LOGIT = 1e-5  # binary masks may differ where |logit| is below this (README section 6)


def _builder(cfg, fixtures_dir, records):
    from crab_jax.cli.quick_start import default_data  # the data section the CLI uses

    tokenizer = FAMILY.load_tokenizer(fixtures_dir / "crab_full" / "tokenizer_mm")
    data = dataclasses.replace(default_data(), tasks=tuple(sorted({r.task for r in records})))
    return FAMILY.example_builder(cfg, data, str(G.media_root(fixtures_dir)), tokenizer)


@pytest.fixture(scope="module")
def records(fixtures_dir):
    return read_quick_start(G.quick_start_input(fixtures_dir)).records


@pytest.fixture(scope="module")
def user_files_model(converted_crab):
    cfg, model = load_converted_model(FAMILY, converted_crab[0])
    prepare_for_inference(model)
    return cfg, model


@pytest.fixture(scope="module")
def full_state_model(converted_crab, fixtures_dir, tmp_path_factory):
    """The model with the seg module's two Fourier buffers of the fixture (in no user file:
    converted from full_state_dict.safetensors, config of the user-files conversion)."""
    out = tmp_path_factory.mktemp("full_state") / "w"
    full = fixtures_dir / "crab_full" / "full_state_dict.safetensors"
    assert convert_main(["to-jax", "--out", str(out), "--crab", str(full), "--config", str(converted_crab[0])]) == 0
    cfg, model = load_converted_model(FAMILY, out)
    prepare_for_inference(model)
    return cfg, model


def test_prompt_ids_are_the_originals(user_files_model, fixtures_dir, records):
    cfg, _ = user_files_model
    builder = _builder(cfg, fixtures_dir, records)
    ref = np.load(fixtures_dir / "generate" / "generate.npz")
    for i, record in enumerate(records):
        assert builder.build(record, i).input_ids.tolist() == ref[f"s{i}_prompt_input_ids"].tolist(), record.task


def test_step_logits_match_within_tolerance(user_files_model, fixtures_dir, manifest, records):
    cfg, model = user_files_model
    builder = _builder(cfg, fixtures_dir, records)
    ref = np.load(fixtures_dir / "generate" / "generate.npz")
    samples = G.generate_manifest(manifest)["samples"]
    tol = G.step_logit_tolerance(manifest)
    n_max = max(len(ref[f"s{i}_generated_ids"]) for i in range(len(samples)))
    worst = 0.0
    for i, record in enumerate(records):
        example = builder.build(record, i)
        batch = collate_padded(builder, [example], bucket_of(builder, [example], seq_bucket(builder, example, LENGTH_MULTIPLE)), 1)
        want = ref[f"s{i}_step_logits"]
        k = G.compared_steps(samples[i], len(want))
        fed = np.full((1, n_max), cfg.pad_token_id, np.int32)  # one shape for all (causal: the tail is never seen)
        fed[0, : len(want)] = ref[f"s{i}_generated_ids"]
        prompt = {key: jnp.asarray(batch[key]) for key in ("input_ids", "attention_mask", "position_ids",
                                                            "media_index", "frames", "fbank")}
        logits, _, _ = reference_forward(model, prompt, jnp.asarray(fed))
        p = batch["input_ids"].shape[1]
        ours = np.asarray(logits[0, p - 1: p - 1 + k])
        err = G.max_abs_error_ratio(ours, want[:k])
        worst = max(worst, err)
        print(f"step logits s{i} {record.task}: max abs err / max|ref| = {err:.3e} = {err / tol:.3f} x tolerance "
              f"({tol:.1e}), {k} steps")
        assert err <= tol, f"sample {i} ({record.task})"
        assert np.argmax(ours, -1).tolist() == ref[f"s{i}_generated_ids"][:k].tolist()
    print(f"step logits: worst {worst:.3e} = {worst / tol:.3f} x tolerance")


@nnx.jit
def _seg_forward(model, batch):
    return model(batch, with_seg=True).binary_logits


def _forced_samples(manifest):
    return [(i, s) for i, s in enumerate(G.generate_manifest(manifest)["samples"]) if "forced_mask_iou" in s]


def test_forced_path_masks(full_state_model, fixtures_dir, manifest, records, tmp_path):
    cfg, model = full_state_model
    builder = _builder(cfg, fixtures_dir, records)
    ref = np.load(fixtures_dir / "generate" / "generate.npz")
    tol = G.step_logit_tolerance(manifest)
    forced = _forced_samples(manifest)
    assert forced, "the fixture has no segmentation sample"
    for i, s in forced:
        example = builder.build(records[i], i)
        ids = ref[f"s{i}_forced_input_ids"].astype(np.int32)
        assert ids[: len(example.input_ids)].tolist() == example.input_ids.tolist()
        teacher = dataclasses.replace(example, input_ids=ids, labels=np.full(len(ids), IGNORE_INDEX, np.int32),
                                      is_seg=True, gt_mask=ref[f"s{i}_gt_mask"].astype(np.float32))
        info = builder.example_plan_info(teacher)  # exact length: no padding, positions as the original's
        batch = builder.collate([teacher], Bucket(info.expanded_len, info.fbank_frames))
        assert batch["mask_positions"][0].tolist() == np.nonzero(ref[f"s{i}_forced_mask_token_mask"])[0].tolist()
        logits = np.asarray(_seg_forward(model, {k: jnp.asarray(v) for k, v in batch.items()}))[0, 0]
        want = ref[f"s{i}_forced_pred_mask_logits"][0]
        err = G.max_abs_error_ratio(logits, want)
        print(f"forced mask logits s{i} {s['task']}: max abs err / max|ref| = {err:.3e} = {err / tol:.3f} x tolerance")
        assert err <= tol
        away = np.abs(want) >= NEAR_ZERO_LOGIT
        binary = mask_files.binary_mask_uint8(logits)
        assert np.array_equal(binary[away], ref[f"s{i}_forced_pred_mask_binary"][0][away])
        paths = mask_files.write_mask_files(str(tmp_path), f"s{i}", logits=logits)
        ours_png, want_png = Image.open(paths["pred_mask_path"]), Image.open(
            fixtures_dir / "generate" / f"s{i}_{s['task']}_forced_pred.png")
        assert ours_png.mode == want_png.mode == "P"
        assert np.array_equal(np.asarray(ours_png)[away], np.asarray(want_png)[away])
        assert np.array_equal(np.load(paths["pred_logits_path"]), logits)
        gt = ref[f"s{i}_gt_mask"]
        iou, f = mask_metrics.mask_iou(logits[None], gt), mask_metrics.eval_fmeasure(logits[None], gt)
        print(f"forced s{i}: IoU {iou:.6f} (original {s['forced_mask_iou']:.6f}), F {f:.6f} "
              f"(original {s['forced_fscore']:.6f})")
        assert abs(iou - s["forced_mask_iou"]) <= 1e-6 and abs(f - s["forced_fscore"]) <= 1e-6
