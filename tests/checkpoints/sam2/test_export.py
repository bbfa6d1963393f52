"""SAM 2.1 weights written back: .pt and HF folder round trips are bit-exact; outputs are atomic."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch

from crab_jax.checkpoints.convert import writers
from crab_jax.checkpoints.convert.readers import open_hf_dir
from crab_jax.checkpoints.sam2.export import converted, write_converted, write_hf, write_original
from crab_jax.checkpoints.sam2.weights import read_sam2
from tests.models.sam2.conftest import state_dict
from tests.sam2_tiny import save_hf_dir, save_original_pt, tiny_hf


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sam2_export")
    return dict(hf=save_hf_dir(d / "hf", "tiny"), pt=save_original_pt(d / "src.pt", "tiny"))


def torch_tensors(path):
    return {k: v for k, v in torch.load(path, weights_only=True)["model"].items()}


def test_pt_round_trip_is_bit_exact(sources, tmp_path):
    cfg = tiny_hf("tiny")[0]
    write_converted(tmp_path / "conv", read_sam2(sources["pt"], cfg))
    n = write_original(str(tmp_path / "back.pt"), read_sam2(str(tmp_path / "conv")))
    src, back = torch_tensors(sources["pt"]), torch_tensors(tmp_path / "back.pt")
    assert n == len(src) and set(back) == set(src)
    for k in src:
        assert back[k].dtype == src[k].dtype and torch.equal(back[k], src[k]), k


def test_hf_round_trip_is_bit_exact_and_loads_in_transformers(sources, tmp_path):
    import transformers

    write_converted(tmp_path / "conv", read_sam2(sources["hf"]))
    write_hf(str(tmp_path / "back"), read_sam2(str(tmp_path / "conv")))
    (c0, t0), (c1, t1) = open_hf_dir(sources["hf"]), open_hf_dir(str(tmp_path / "back"))
    assert c1 == c0 and set(t1) == set(t0)
    for k in t0:
        a, b = t0[k], t1[k]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k
    model = transformers.Sam2Model.from_pretrained(str(tmp_path / "back"))
    ref = state_dict(tiny_hf("tiny")[1])
    for k, v in state_dict(model).items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)


def test_hf_export_of_a_pt_builds_its_config(sources, tmp_path):
    import transformers

    cfg = tiny_hf("tiny")[0]
    write_hf(str(tmp_path / "hf"), read_sam2(sources["pt"], cfg))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "sam2" and config["architectures"] == ["Sam2Model"]
    model = transformers.Sam2Model.from_pretrained(str(tmp_path / "hf"))
    assert read_sam2(str(tmp_path / "hf")).cfg == cfg
    ref = state_dict(tiny_hf("tiny")[1])
    for k, v in state_dict(model).items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)


def test_dtype_cast_is_kept_on_export(sources, tmp_path):
    bf16 = np.dtype(ml_dtypes.bfloat16)
    w = read_sam2(sources["hf"])
    c = converted(w, bf16)
    assert {v.dtype for v in c.flat.values()} == {bf16} and "cast to bfloat16" in " ".join(c.notes)
    write_converted(tmp_path / "conv", w, dtype=bf16)
    back = read_sam2(str(tmp_path / "conv"))
    write_original(str(tmp_path / "bf16.pt"), back)
    pt = torch_tensors(tmp_path / "bf16.pt")
    assert {v.dtype for v in pt.values()} == {torch.bfloat16}
    qkv = w.flat["vision_encoder.backbone.blocks.0.attn.qkv.weight"].T.astype(bf16)
    np.testing.assert_array_equal(pt["image_encoder.trunk.blocks.0.attn.qkv.weight"].float().numpy(),
                                  qkv.astype(np.float32))


def test_outputs_are_atomic(sources, tmp_path, monkeypatch):
    w = read_sam2(sources["hf"])
    out = tmp_path / "hf_out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_hf(str(out), w)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writers, "write_hf_shards", fail)
    with pytest.raises(OSError, match="disk full"):
        write_hf(str(out), w, overwrite=True)
    assert os.listdir(out) == ["keep"]  # the old output is untouched
    assert sorted(os.listdir(tmp_path)) == ["hf_out"]  # no partial folder left
    monkeypatch.setattr(torch, "save", fail)  # fails inside the atomic write of the .pt
    with pytest.raises(OSError, match="disk full"):
        write_original(str(tmp_path / "x.pt"), w)
    assert sorted(os.listdir(tmp_path)) == ["hf_out"]
