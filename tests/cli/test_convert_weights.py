"""The converter CLI: with tiny HF models built here (sharded folders, logits after export,
strictness messages, unknown formats, atomic outputs, bf16 output, --help), and the family
seam (``--family`` picks the converter that does the work)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from crab_jax import families
from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.family_converter import CheckpointCheck, ConverterTexts, FamilyConverter
from crab_jax.checkpoints.convert.output import Converted
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.cli.convert_weights.cli import main


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors-shards", "bin-shards"])
def test_sharded_llama_round_trip_and_logits(tiny_llama, tmp_path, safe):
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


def _fake_converter(calls: list) -> FamilyConverter:
    """A family converter that records what the CLI hands it (the CLI knows no family)."""
    def add_to_jax(parser):
        parser.add_argument("--source", required=True)

    def to_jax(args, dtype):
        calls.append(("to_jax", args.source, dtype))
        return Converted({"w.weight": np.ones((2, 3), dtype or np.float32)}, {"format": "fake/1"}, ["all"],
                         ["made up"], {})

    def check(folder, arrays):
        calls.append(("check", sorted(arrays)))
        return CheckpointCheck(about="fake config", problems=None, unmatched=[])

    texts = ConverterTexts(description="Convert FAKE weights.", to_jax_epilog="", to_torch_description="",
                           to_torch_epilog="", from_run_epilog="")
    return FamilyConverter(
        config_file="fake_config.json", texts=texts, add_to_jax_arguments=add_to_jax, to_jax=to_jax,
        add_to_torch_arguments=lambda parser: None, to_torch=lambda args: "", from_run=lambda *a: None,
        classify_keys=lambda keys: ({}, list(keys)), check_checkpoint=check)


def test_family_flag_picks_the_converter(tmp_path, monkeypatch, capsys):
    """``--family NAME``: that family's converter adds the options and converts; the CLI writes
    ``params/`` + the family's config file and inspects through it."""
    calls = []
    fake = _fake_converter(calls)
    monkeypatch.setattr(families, "names", lambda: ("crab", "fake"))
    monkeypatch.setattr(families, "get", lambda name: types.SimpleNamespace(converter=fake))
    assert cli("--family", "fake", "to-jax", "--out", tmp_path / "o", "--source", "s.bin", "--dtype", "fp16") == 0
    assert calls == [("to_jax", "s.bin", np.dtype(np.float16))]
    assert json.loads((tmp_path / "o" / "fake_config.json").read_text()) == {"format": "fake/1"}
    assert orbax_io.restore_flat(tmp_path / "o")["w.weight"].dtype == np.float16
    out = capsys.readouterr().out
    assert "note: made up" in out and "(params/ + fake_config.json)" in out
    assert cli("inspect", "--family", "fake", tmp_path / "o") == 0  # after the subcommand too
    assert calls[-1] == ("check", ["w.weight"]) and "fake config" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--family", "fake", "--help"])
    assert e.value.code == 0 and "Convert FAKE weights." in capsys.readouterr().out


def test_unknown_family_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--family", "no-such-family", "inspect", "x"])
    assert e.value.code == 2 and "no-such-family" in capsys.readouterr().err
