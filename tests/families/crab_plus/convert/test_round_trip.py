"""Bit-exact round trips through the CLI on the fixture's tiny files: the HF directory and
``finetune_weights.bin`` -> crab_jax -> back (one file and sharded, fp32 and bf16), crab_jax ->
torch -> crab_jax, and the exported directory loaded by transformers' own class."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.families.crab_plus.convert import config_io
from tests.families.crab_plus.convert.conftest import (bit_differences, cli, read_hf_dir, torch_load, write_adapter,
                                                       write_hf_dir)

pytestmark = pytest.mark.parity
SPEECH = ("talker.", "token2wav.")  # the HF checkpoint's non-thinker parts: never converted


def thinker_part(state):
    """``(thinker tensors, the talker / token2wav keys)`` of an HF checkpoint's state."""
    return {k: v for k, v in state.items() if not k.startswith(SPEECH)}, sorted(k for k in state if k.startswith(SPEECH))


def assert_same_flat(actual: dict, reference: dict):
    """Two converted checkpoints' arrays: same names, shapes, dtypes and bits."""
    assert sorted(actual) == sorted(reference)
    for k, r in reference.items():
        a = actual[k]
        assert (a.shape, a.dtype) == (r.shape, r.dtype), f"{k}: {a.shape} {a.dtype} != {r.shape} {r.dtype}"
        assert np.array_equal(a.view(np.uint8), r.view(np.uint8)), f"{k}: bits differ"


def test_hf_dir_round_trip_is_bit_exact(converted, tiny, hf_state, tmp_path, capsys):
    """to-jax -> to-torch --format hf: every thinker tensor back with its dtype and bits, only the
    talker / token2wav ones (none in the tiny file) missing, the original config.json written."""
    out = tmp_path / "hf"
    assert cli("to-torch", converted, "--format", "hf", "--out", out) == 0
    assert "--format adapter writes them" in capsys.readouterr().out  # the I-LoRA is not silently dropped
    back = read_hf_dir(out)
    thinker, speech = thinker_part(hf_state)
    missing = sorted(set(hf_state) - set(back))
    assert missing == speech, f"missing beyond the talker / token2wav keys {speech}: {sorted(set(missing) - set(speech))}"
    assert bit_differences(back, thinker) == []
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny[0] / "config.json").read_text())
    assert not (out / "model.safetensors.index.json").exists()  # one file below --max-shard-gb
    # Negative control: the comparison sees one flipped bit.
    flipped = dict(back)
    key = next(iter(flipped))
    flipped[key] = flipped[key].clone()
    flipped[key].view(-1).view(torch.uint8)[0] ^= 1
    assert bit_differences(flipped, thinker) == [f"{key}: bits differ"]


def test_sharded_hf_output_has_an_index_and_the_same_tensors(converted, hf_state, tmp_path):
    total = sum(t.numel() * t.element_size() for t in hf_state.values())
    limit = total / 3  # bytes: at least three shards
    out = tmp_path / "hf"
    assert cli("to-torch", converted, "--format", "hf", "--out", out, "--max-shard-gb", limit / 2**30) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and sorted(p.name for p in out.glob("*.safetensors")) == shards
    largest = max(t.numel() * t.element_size() for t in hf_state.values())
    for shard in shards:  # a shard passes the limit only by its one first tensor
        assert (out / shard).stat().st_size <= max(limit, largest) + 2**16, shard
    assert bit_differences(read_hf_dir(out), thinker_part(hf_state)[0]) == []  # read_hf_dir checks the index


def test_sharded_input_skips_talker_and_token2wav(converted, tiny, hf_state, tmp_path, capsys):
    """The released layout: thinker tensors over shards, token2wav in one of them, the talker in a
    listed shard that was not downloaded. They are skipped by name; the base converts to the same
    arrays, and exports without them (the assert says which are missing)."""
    keys = sorted(hf_state)
    half = len(keys) // 2
    token2wav = {"token2wav.code2wav_dit_model.proj.weight": torch.ones(2, 3)}
    src = write_hf_dir(tmp_path / "src", tiny[0], {
        "model-00001-of-00003.safetensors": {k: hf_state[k] for k in keys[:half]},
        "model-00002-of-00003.safetensors": {**{k: hf_state[k] for k in keys[half:]}, **token2wav}},
        absent={"model-00003-of-00003.safetensors": ["talker.model.layers.0.mlp.up_proj.weight"]})
    assert cli("to-jax", "--out", tmp_path / "j", "--hf", src) == 0
    printed = capsys.readouterr().out
    assert "talker" in printed and "token2wav" in printed  # the skipped parts are reported
    flat = orbax_io.restore_flat(tmp_path / "j")
    assert_same_flat(flat, {k: v for k, v in orbax_io.restore_flat(converted).items() if k in flat})
    assert config_io.load_config(tmp_path / "j").contents == ("base",)
    assert cli("to-torch", tmp_path / "j", "--format", "hf", "--out", tmp_path / "hf") == 0
    back = read_hf_dir(tmp_path / "hf")
    original = {**hf_state, **token2wav, "talker.model.layers.0.mlp.up_proj.weight": None}
    thinker, speech = thinker_part(original)
    missing = sorted(set(original) - set(back))
    assert missing == speech, f"missing beyond the talker / token2wav keys {speech}: {sorted(set(missing) - set(speech))}"
    assert bit_differences(back, thinker) == []


def test_adapter_round_trip_is_bit_exact(converted, adapter_state, tmp_path):
    """to-jax (--hf + --adapter) -> to-torch --format adapter: the original file's keys, shapes,
    dtypes and bits (both files read by torch.load)."""
    out = tmp_path / "finetune_weights.bin"
    assert cli("to-torch", converted, "--format", "adapter", "--out", out) == 0
    assert bit_differences(torch_load(out), adapter_state) == []


def test_adapter_alone_round_trip(tiny, converted, adapter_state, tmp_path):
    """--adapter alone: the model config is the config.json the training saved next to it."""
    _, adapter, alpha = tiny
    src = write_adapter(tmp_path / "checkpoint-1", adapter_state, adapter.parent / "config.json")
    assert cli("to-jax", "--out", tmp_path / "j", "--adapter", src, "--lora-alpha", alpha) == 0
    saved = config_io.load_config(tmp_path / "j")
    assert saved.contents == ("adapter",) and saved.thinker == config_io.load_config(converted).thinker
    flat = orbax_io.restore_flat(tmp_path / "j")
    assert_same_flat(flat, {k: v for k, v in orbax_io.restore_flat(converted).items() if k in flat})
    assert cli("to-torch", tmp_path / "j", "--format", "adapter", "--out", tmp_path / "out.bin") == 0
    assert bit_differences(torch_load(tmp_path / "out.bin"), adapter_state) == []


def test_jax_torch_jax_gives_equal_arrays(converted, tiny, tmp_path):
    assert cli("to-torch", converted, "--format", "hf", "--out", tmp_path / "hf") == 0
    assert cli("to-torch", converted, "--format", "adapter", "--out", tmp_path / "a.bin") == 0
    assert cli("to-jax", "--out", tmp_path / "j", "--hf", tmp_path / "hf", "--adapter", tmp_path / "a.bin",
               "--lora-alpha", tiny[2]) == 0
    assert_same_flat(orbax_io.restore_flat(tmp_path / "j"), orbax_io.restore_flat(converted))
    assert config_io.load_config(tmp_path / "j") == config_io.load_config(converted)


def test_bf16_arrays_and_bf16_torch_files(tiny, hf_state, adapter_state, tmp_path):
    """--dtype bf16: bfloat16 arrays (rounded as torch rounds), and to-torch writes them as bf16."""
    hf, adapter, alpha = tiny
    assert cli("to-jax", "--out", tmp_path / "j", "--hf", hf, "--adapter", adapter, "--lora-alpha", alpha,
               "--dtype", "bf16") == 0
    flat = orbax_io.restore_flat(tmp_path / "j")
    assert {v.dtype for v in flat.values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert config_io.load_config(tmp_path / "j").thinker.text.param_dtype == np.dtype(ml_dtypes.bfloat16)
    assert cli("to-torch", tmp_path / "j", "--format", "hf", "--out", tmp_path / "hf") == 0
    assert cli("to-torch", tmp_path / "j", "--format", "adapter", "--out", tmp_path / "a.bin") == 0
    for back, original in ((read_hf_dir(tmp_path / "hf"), hf_state), (torch_load(tmp_path / "a.bin"), adapter_state)):
        assert bit_differences(back, {k: v.to(torch.bfloat16) for k, v in original.items()}) == []


def test_exported_dir_loads_in_transformers_with_equal_logits(converted, tiny, tmp_path):
    """transformers' own thinker class loads the export with no missing / unexpected key and
    computes the same logits as from the fixture directory."""
    transformers = pytest.importorskip("transformers")
    cls = transformers.Qwen2_5OmniThinkerForConditionalGeneration
    assert cli("to-torch", converted, "--format", "hf", "--out", tmp_path / "hf") == 0
    vocab = json.loads((tiny[0] / "config.json").read_text())["thinker_config"]["text_config"]["vocab_size"]
    ids = (torch.arange(11) * 7919 % vocab)[None]  # [1, 11] distinct-ish ids across the vocabulary
    logits = []
    for folder in (tiny[0], tmp_path / "hf"):
        model, info = cls.from_pretrained(folder, output_loading_info=True)
        assert all(not v for v in info.values()), (folder, info)
        with torch.no_grad():
            logits.append(model.eval()(input_ids=ids).logits)
    assert logits[0].abs().max() > 0 and torch.equal(logits[0], logits[1])


def test_export_restores_in_batches_and_stays_bit_exact(converted, hf_state, adapter_state, tmp_path, monkeypatch):
    """to-torch reads the checkpoint in batches in the writer's order (the tiny model fits one
    batch of the default size: shrink it so that every export takes many)."""
    from crab_jax.families.crab_plus.convert import to_torch

    meta = orbax_io.params_metadata(converted)
    limit = max(int(np.prod(s)) * np.dtype(d).itemsize for s, d in meta.values()) // 2  # the largest leaf: alone
    calls: list[list[str]] = []
    restore = to_torch.restore_subset

    def counted(folder, names):
        calls.append(list(names))
        return restore(folder, names)

    monkeypatch.setattr(to_torch, "MIN_RESTORE_BATCH_BYTES", limit)
    monkeypatch.setattr(to_torch, "RESTORE_BATCHES", 10**9)
    monkeypatch.setattr(to_torch, "restore_subset", counted)
    assert cli("to-torch", converted, "--format", "hf", "--out", tmp_path / "hf") == 0
    assert cli("to-torch", converted, "--format", "adapter", "--out", tmp_path / "a.bin") == 0
    assert bit_differences(read_hf_dir(tmp_path / "hf"), thinker_part(hf_state)[0]) == []
    assert bit_differences(torch_load(tmp_path / "a.bin"), adapter_state) == []
    read = [n for batch in calls for n in batch]
    assert len(calls) > 2 and sorted(read) == sorted(meta) and len(set(read)) == len(read)  # each array once
    for batch in calls:
        size = sum(int(np.prod(meta[n][0])) * np.dtype(meta[n][1]).itemsize for n in batch)
        assert len(batch) == 1 or size <= limit, (batch, size, limit)
