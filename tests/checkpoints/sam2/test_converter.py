"""``crab-convert-weights --family sam2``: to-jax / to-torch / inspect / from-run through the CLI."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from crab_jax.checkpoints.sam2.converter import classify_keys
from crab_jax.checkpoints.sam2.weights import CONFIG_FILE, read_sam2
from crab_jax.cli.convert_weights.cli import main
from tests.sam2_tiny import save_hf_dir, save_original_pt, tiny_hf


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sam2_cli")
    extra = {"obj_ptr_proj.layers.0.weight": np.ones((2, 2), np.float32)}
    return dict(hf=save_hf_dir(d / "hf", "tiny"), pt=save_original_pt(d / "src.pt", "tiny", extra=extra))


def test_pt_to_jax_and_back(sources, tmp_path):
    code, text = run("--family", "sam2", "to-jax", "--sam2", sources["pt"], "--config", sources["hf"],
                     "--out", tmp_path / "conv")
    assert code == 0, text
    assert "ignored:" in text and "obj_ptr_proj.layers.0.weight (video model only)" in text
    assert (tmp_path / "conv" / CONFIG_FILE).is_file()
    assert read_sam2(str(tmp_path / "conv")).cfg == tiny_hf("tiny")[0]
    code, text = run("--family", "sam2", "to-torch", tmp_path / "conv", "--format", "pt", "--out", tmp_path / "b.pt")
    assert code == 0, text
    src = torch.load(sources["pt"], weights_only=True)["model"]
    back = torch.load(tmp_path / "b.pt", weights_only=True)["model"]
    assert set(back) == set(src) - {"obj_ptr_proj.layers.0.weight"}
    assert all(torch.equal(back[k], src[k]) for k in back)
    code, text = run("--family", "sam2", "to-torch", tmp_path / "conv", "--format", "pt", "--out", tmp_path / "b.pt")
    assert code == 1 and "already exists" in text


def test_hf_to_jax_with_dtype_and_inspect(sources, tmp_path):
    code, text = run("--family", "sam2", "to-jax", "--sam2", sources["hf"], "--dtype", "bf16", "--out", tmp_path / "c")
    assert code == 0 and "bfloat16" in text, text
    code, text = run("--family", "sam2", "inspect", tmp_path / "c", "--summary")
    assert code == 0 and "every array matches the config's model" in text and "arrays no mapping row matches: 0" in text
    code, text = run("--family", "sam2", "to-torch", tmp_path / "c", "--format", "hf", "--out", tmp_path / "hf")
    assert code == 0 and json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "sam2", text
    code, text = run("--family", "sam2", "inspect", sources["pt"], "--summary")
    assert code == 0 and "original:" in text and "video-only (skipped): 1 keys" in text
    assert "keys no mapping row matches: 0" in text, text


def test_mismatch_exits_2_and_from_run_is_refused(sources, tmp_path):
    code, text = run("--family", "sam2", "to-jax", "--sam2", sources["pt"], "--out", tmp_path / "large")
    assert code == 2 and "expected shape" in text and not (tmp_path / "large").exists()
    code, text = run("--family", "sam2", "from-run", tmp_path, "--base", tmp_path, "--out", tmp_path / "r")
    assert code == 1 and "not trained" in text


def test_classify_keys():
    matched, unmatched = classify_keys(["mask_decoder.conv_s0.weight", "sam_mask_decoder.conv_s0.weight",
                                        "memory_attention.x", "memory_encoder.y", "junk.weight"])
    assert matched == {"mask_decoder.conv_s0.weight": "hf", "sam_mask_decoder.conv_s0.weight": "original",
                       "memory_attention.x": "video-only (skipped)", "memory_encoder.y": "video-only (skipped)"}
    assert unmatched == ["junk.weight"]
