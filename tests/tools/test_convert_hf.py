"""Weight conversion with tiny HF models built here: sharded folders, logits after export,
strictness messages, unknown formats, atomic outputs, bf16 output, --help."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.cli.convert_weights.cli import main
from crab_jax.checkpoints.convert.tensor_files import open_tensors


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors-shards", "bin-shards"])
def test_sharded_llama_round_trip_and_logits(tiny_llama, tmp_path, safe):
    from transformers import LlamaForCausalLM

    src = tmp_path / "src"
    tiny_llama.save_pretrained(src, max_shard_size="20KB", safe_serialization=safe)
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    assert (src / index).is_file()
    assert cli("to-jax", "--out", tmp_path / "j", "--llama", src) == 0
    assert cli("to-torch", tmp_path / "j", "--format", "hf-llama", "--out", tmp_path / "hf", "--max-shard-gb", 1e-5) == 0
    ref = open_tensors(src)
    back = open_tensors(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert sorted(back) == sorted(ref)
    for k in ref:
        assert back[k].dtype == ref[k].dtype and np.array_equal(back[k], ref[k]), k
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.arange(12)[None] % 96
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, tiny_llama(ids).logits)
    # jax -> torch -> jax
    assert cli("to-jax", "--out", tmp_path / "j2", "--llama", tmp_path / "hf") == 0
    a, b = orbax_io.restore_flat(tmp_path / "j"), orbax_io.restore_flat(tmp_path / "j2")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_clip_vision_round_trip_and_outputs(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                             num_attention_heads=2, image_size=28, patch_size=14)).eval()
    model.save_pretrained(tmp_path / "src")
    assert cli("to-jax", "--out", tmp_path / "j", "--clip", tmp_path / "src", "--select-layers", "1,2") == 0
    assert cli("to-torch", tmp_path / "j", "--format", "hf-clip", "--out", tmp_path / "hf") == 0
    ref, back = open_tensors(tmp_path / "src"), open_tensors(tmp_path / "hf")
    assert sorted(back) == sorted(k for k in ref if not k.endswith("position_ids"))
    assert all(np.array_equal(back[k], ref[k]) for k in back)
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        out = CLIPVisionModel.from_pretrained(tmp_path / "hf").eval()(pixels).last_hidden_state
        assert torch.equal(out, model(pixels).last_hidden_state)


def test_bf16_output(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path / "src")
    assert cli("to-jax", "--out", tmp_path / "j", "--llama", tmp_path / "src", "--dtype", "bf16") == 0
    assert {str(d) for _, d in orbax_io.params_metadata(tmp_path / "j").values()} == {"bfloat16"}
    assert cli("to-torch", tmp_path / "j", "--format", "hf-llama", "--out", tmp_path / "hf") == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    w = open_tensors(tmp_path / "hf")["model.norm.weight"]
    assert w.dtype.name == "bfloat16"


def _edited_copy(tiny_llama, folder, edit):
    from safetensors.torch import save_file

    tiny_llama.save_pretrained(folder)
    sd = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_unexpected_misshaped_keys_fail_naming_each(tiny_llama, tmp_path, capsys):
    def edit(sd):
        del sd["model.layers.1.mlp.up_proj.weight"]
        sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
        sd["model.norm.weight"] = torch.zeros(33)

    _edited_copy(tiny_llama, tmp_path / "src", edit)
    assert cli("to-jax", "--out", tmp_path / "j", "--llama", tmp_path / "src") == 2
    err = capsys.readouterr().err
    assert "missing key 'base_model.model.model.layers.1.mlp.up_proj.weight'" in err
    assert "expected shape (64, 32)" in err
    assert "unexpected key 'base_model.model.model.layers.0.self_attn.extra.weight'" in err
    assert "model.norm.weight" in err and "expected (32,), found (33,)" in err
    assert not (tmp_path / "j").exists() and not list(tmp_path.glob("j.partial-*"))


def test_unknown_format_lists_supported_ones(tmp_path, capsys):
    bad = tmp_path / "weights.npz"
    np.savez(bad, a=np.zeros(2))
    assert cli("inspect", bad) == 1
    err = capsys.readouterr().err
    assert "unknown checkpoint format" in err and ".safetensors" in err and "Hugging Face directory" in err
    assert cli("to-jax", "--out", tmp_path / "j", "--component", f"seg_module={bad}") == 1
    assert "Supported formats" in capsys.readouterr().err


def test_failed_write_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    tiny_llama.save_pretrained(tmp_path / "src")

    def boom(*a, **k):
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr(orbax_io, "save_params", boom)
    assert cli("to-jax", "--out", tmp_path / "j", "--llama", tmp_path / "src") == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "src"]


@pytest.mark.parametrize("sub", [[], ["to-jax"], ["to-torch"], ["inspect"]])
def test_help_explains_each_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(sub + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and len(out) > 300
