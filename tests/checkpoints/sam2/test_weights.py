"""Strict SAM 2.1 weight reading: the original's .pt, an HF Sam2Model folder, a converted folder."""

import json

import numpy as np
import pytest
import torch

from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.writers import save_safetensors, save_torch_bin
from crab_jax.checkpoints.sam2.export import write_converted
from crab_jax.checkpoints.sam2.weights import (CONFIG_FILE, build_model, load_sam2_model, read_sam2, source_kind)
from crab_jax.models.state_dict import flat_arrays
from tests.models.sam2.conftest import nnx_model, state_dict
from tests.sam2_tiny import save_hf_dir, save_original_pt, tiny_hf

QKV = "image_encoder.trunk.blocks.0.attn.qkv.weight"


@pytest.fixture(scope="module")
def cfg():
    return tiny_hf("tiny")[0]


@pytest.fixture(scope="module")
def reference(cfg):
    """crab_jax path -> array of the tiny model, loaded by the tests' own route (HF state dict + table)."""
    return flat_arrays(nnx_model(cfg, state_dict(tiny_hf("tiny")[1])))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sam2_sources")
    video = {"memory_attention.layers.0.linear1.weight": np.ones((2, 2), np.float32),
             "maskmem_tpos_enc": np.ones((7, 1, 1, 16), np.float32)}
    return dict(hf=save_hf_dir(d / "hf", "tiny"), pt=save_original_pt(d / "sam2.1_tiny.pt", "tiny", extra=video), dir=d)


def equal(flat, reference):
    assert set(flat) == set(reference)
    for k in reference:
        np.testing.assert_array_equal(np.asarray(flat[k]), reference[k], err_msg=k)


def test_each_source_gives_the_same_weights(sources, cfg, reference, tmp_path):
    pt = read_sam2(sources["pt"], cfg)
    assert sorted(pt.ignored) == sorted(f"{sources['pt']}:{k}" for k in ("memory_attention.layers.0.linear1.weight",
                                                                         "maskmem_tpos_enc"))
    hf = read_sam2(sources["hf"])
    assert hf.cfg == cfg and hf.hf_config is not None and pt.hf_config is None
    write_converted(tmp_path / "conv", hf)
    conv = read_sam2(str(tmp_path / "conv"))
    assert conv.cfg == cfg and conv.hf_config == hf.hf_config
    for w in (pt, hf, conv):
        equal(w.flat, reference)
    _, model = load_sam2_model(str(tmp_path / "conv"))
    equal(flat_arrays(model), reference)


def test_source_kinds_and_config_only_for_the_pt(sources, cfg, tmp_path):
    assert source_kind(sources["pt"]) == "original" and source_kind(sources["hf"]) == "hf"
    with pytest.raises(ValueError, match="only given for the original"):
        read_sam2(sources["hf"], cfg)
    with pytest.raises(FileNotFoundError, match="no such SAM2"):
        read_sam2(str(tmp_path / "nothing.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Supported formats"):
        read_sam2(str(tmp_path / "empty"))


def test_pt_defaults_to_hiera_large_and_names_its_shapes(sources):
    with pytest.raises(MappingError) as e:
        read_sam2(sources["pt"])  # tiny weights read as Hiera-L
    assert "expected shape (432, 144)" in str(e.value) and QKV in str(e.value)


def _pt_variant(sources, name, change):
    sd = torch.load(sources["pt"], weights_only=True)["model"]
    sd = {k: v.numpy() for k, v in sd.items()}
    change(sd)
    path = sources["dir"] / name
    save_torch_bin(str(path), sd, extra={}, overwrite=True)
    return str(path)


def test_pt_missing_unexpected_misshaped_are_named_in_its_own_words(sources, cfg):
    def change(sd):
        del sd[QKV]
        sd["image_encoder.trunk.blocks.0.attn.extra.weight"] = np.zeros((2, 2), np.float32)
        sd["sam_mask_decoder.iou_token.weight"] = np.zeros((1, 7), np.float32)

    with pytest.raises(MappingError) as e:
        read_sam2(_pt_variant(sources, "bad.pt", change), cfg)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert f"missing {QKV!r}" in msg
    assert "unexpected 'image_encoder.trunk.blocks.0.attn.extra.weight'" in msg
    assert "'sam_mask_decoder.iou_token.weight': expected shape (1, 32), found (1, 7)" in msg


def test_hf_dir_is_strict_but_skips_the_video_model(sources, cfg, tmp_path):
    from crab_jax.checkpoints.convert.readers import open_hf_dir

    config, tensors = open_hf_dir(sources["hf"])
    sd = {k: tensors[k] for k in tensors}
    sd["memory_encoder.out_proj.weight"] = np.zeros((2, 2), np.float32)  # video model: skipped
    del sd["mask_decoder.conv_s0.weight"]
    sd["mask_decoder.conv_s2.weight"] = np.zeros((2, 2), np.float32)
    sd["mask_decoder.iou_token.weight"] = np.zeros((1, 5), np.float32)
    bad = tmp_path / "hf_bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(config))
    save_safetensors(str(bad / "model.safetensors"), sd)
    with pytest.raises(MappingError) as e:
        read_sam2(str(bad))
    msg = str(e.value)
    assert "mask_decoder.conv_s0.weight" in msg and "missing" in msg
    assert "'mask_decoder.conv_s2.weight'" in msg and "unexpected" in msg
    assert "mask_decoder.iou_token.weight" in msg and "(1, 5)" in msg and "(1, 32)" in msg
    assert "memory_encoder" not in msg


def test_converted_folder_is_strict(sources, tmp_path):
    w = read_sam2(sources["hf"])
    w.flat.pop("mask_decoder.conv_s0.weight")
    w.flat["mask_decoder.extra"] = np.zeros(3, np.float32)
    w.flat["no_memory_embedding"] = np.zeros((1, 1, 5), np.float32)
    write_converted(tmp_path / "conv", w)
    with pytest.raises(MappingError) as e:
        read_sam2(str(tmp_path / "conv"))
    msg = str(e.value)
    assert "missing 'mask_decoder.conv_s0.weight'" in msg and "unexpected 'mask_decoder.extra'" in msg
    assert "'no_memory_embedding': expected shape (1, 1, 32), found (1, 1, 5)" in msg
    (tmp_path / "conv" / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        read_sam2(str(tmp_path / "conv"))


def test_build_model_is_strict_too(sources):
    w = read_sam2(sources["hf"])
    w.flat.pop("no_memory_embedding")
    with pytest.raises(ValueError, match="no_memory_embedding"):
        build_model(w)
