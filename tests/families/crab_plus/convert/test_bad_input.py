"""Inputs that do not fit the model fail through the CLI with exit status 2, naming the key and
both shapes (or the rank / head count found and expected), and leave nothing at ``--out``.
Every damaged input is built in ``tmp_path`` from the fixture files (never edited)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.families.crab_plus.convert import config_io
from tests.families.crab_plus.convert.conftest import cli, leftovers, write_adapter, write_hf_dir

pytestmark = pytest.mark.parity


def failure(capsys, out, *argv) -> str:
    """Runs the CLI, which must exit 2 and leave nothing at ``out``; returns its stderr."""
    rc = cli(*argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert leftovers(out) == []
    return err


def first(state, contains: str) -> str:
    """The first key (sorted) with ``contains`` in it and a 2-D tensor."""
    return next(k for k in sorted(state) if contains in k and state[k].ndim == 2)


def shape(t) -> str:
    return str(tuple(t.shape))


@pytest.fixture(scope="module")
def lora(crab_plus_manifest):
    """The tiny adapter's ``r`` and head count (the manifest's ``tiny_lora``)."""
    c = crab_plus_manifest["fixtures"]["state_dict_names"]["config"]["tiny_lora"]
    return c["r"], c["lora_nums"]


# -- the HF directory ------------------------------------------------------------------------------


def test_hf_dir_missing_a_thinker_tensor(tiny, hf_state, tmp_path, capsys):
    key = first(hf_state, "visual.blocks.")
    src = write_hf_dir(tmp_path / "src", tiny[0], {"model.safetensors": {k: v for k, v in hf_state.items() if k != key}})
    err = failure(capsys, tmp_path / "out", "to-jax", "--out", tmp_path / "out", "--hf", src)
    assert f"missing tensor {key!r}" in err and shape(hf_state[key]) in err


def test_hf_dir_with_an_unknown_thinker_tensor(tiny, hf_state, tmp_path, capsys):
    extra = "thinker.model.layers.0.mlp.extra_proj.weight"
    src = write_hf_dir(tmp_path / "src", tiny[0], {"model.safetensors": {**hf_state, extra: torch.zeros(2, 3)}})
    err = failure(capsys, tmp_path / "out", "to-jax", "--out", tmp_path / "out", "--hf", src)
    assert f"unexpected tensor {extra!r} (2, 3)" in err and "1 problem(s)" in err


def test_hf_dir_with_a_wrong_shape(tiny, hf_state, tmp_path, capsys):
    key = first(hf_state, "audio_tower.layers.")
    right = hf_state[key]
    wrong = torch.zeros(right.shape[0] + 1, *right.shape[1:])
    src = write_hf_dir(tmp_path / "src", tiny[0], {"model.safetensors": {**hf_state, key: wrong}})
    err = failure(capsys, tmp_path / "out", "to-jax", "--out", tmp_path / "out", "--hf", src)
    assert f"wrong shape for {key!r}: the file has {shape(wrong)}, the model expects {shape(right)}" in err


def test_sharded_dir_whose_index_names_a_missing_shard(tiny, hf_state, tmp_path, capsys):
    keys = sorted(hf_state)
    key = keys[-1]
    src = write_hf_dir(tmp_path / "src", tiny[0], {
        "model-00001-of-00003.safetensors": {k: hf_state[k] for k in keys[:10]},
        "model-00002-of-00003.safetensors": {k: hf_state[k] for k in keys[10:-1]}},
        absent={"model-00003-of-00003.safetensors": [key]})
    err = failure(capsys, tmp_path / "out", "to-jax", "--out", tmp_path / "out", "--hf", src)
    assert f"missing tensor {key!r}" in err and shape(hf_state[key]) in err
    assert "model-00003-of-00003.safetensors" in err and "1 problem(s)" in err  # not also a plain 'missing'


# -- finetune_weights.bin --------------------------------------------------------------------------


def adapter_failure(capsys, tmp_path, tiny, state, *options) -> str:
    """``to-jax --adapter`` of ``state`` (config.json next to it) must fail; its stderr."""
    src = write_adapter(tmp_path / "checkpoint-1", state, tiny[1].parent / "config.json")
    return failure(capsys, tmp_path / "out", "to-jax", "--out", tmp_path / "out", "--adapter", src,
                   "--lora-alpha", tiny[2], *options)


def test_adapter_missing_one_key(tiny, adapter_state, tmp_path, capsys):
    key = first(adapter_state, ".lora_A.")
    err = adapter_failure(capsys, tmp_path, tiny, {k: v for k, v in adapter_state.items() if k != key})
    assert f"missing tensor {key!r}: the model expects shape {shape(adapter_state[key])}" in err


def test_adapter_with_an_extra_key(tiny, adapter_state, tmp_path, capsys):
    a = first(adapter_state, ".lora_A.")
    extra = a.replace(".lora_A.", ".lora_C.")
    err = adapter_failure(capsys, tmp_path, tiny, {**adapter_state, extra: adapter_state[a]})
    assert f"unexpected tensor {extra!r} {shape(adapter_state[a])}" in err


def test_adapter_with_a_wrong_shape_lora_b_head(tiny, adapter_state, tmp_path, capsys):
    key = first(adapter_state, ".lora_B1.")
    right = adapter_state[key]
    wrong = torch.zeros(right.shape[0] + 1, right.shape[1])
    err = adapter_failure(capsys, tmp_path, tiny, {**adapter_state, key: wrong})
    assert f"wrong shape for {key!r}: the file has {shape(wrong)}, the model expects {shape(right)}" in err


def half_rank(state: dict, r: int) -> dict:
    """Every module's adapter cut to rank ``r // 2`` (lora_A rows, lora_B columns)."""
    out = {}
    for k, v in state.items():
        out[k] = v[: r // 2] if ".lora_A." in k else v[:, : r // 2] if ".lora_B" in k else v
    return out


def test_adapter_of_another_rank(tiny, converted, adapter_state, lora, tmp_path, capsys):
    r, _ = lora
    small = half_rank(adapter_state, r)
    err = adapter_failure(capsys, tmp_path / "option", tiny, small, "--lora-r", r)
    assert f"rank {r // 2}" in err and f"rank {r} (--lora-r)" in err
    # The model told by a converted checkpoint's config (whose I-LoRA the adapter must fit).
    err = adapter_failure(capsys, tmp_path / "config", tiny, small, "--config", converted)
    assert f"rank {r // 2}" in err and f"rank {r} ({converted / config_io.CONFIG_FILE})" in err
    # Told nothing, the rank is the file's: it converts as a rank r // 2 adapter.
    src = write_adapter(tmp_path / "plain" / "checkpoint-1", small, tiny[1].parent / "config.json")
    assert cli("to-jax", "--out", tmp_path / "plain" / "out", "--adapter", src, "--lora-alpha", tiny[2]) == 0
    assert config_io.load_config(tmp_path / "plain" / "out").thinker.lora.r == r // 2


def test_adapter_of_another_head_count(tiny, adapter_state, lora, tmp_path, capsys):
    _, heads = lora
    last = f".lora_B{heads - 1}."
    fewer = {k: v for k, v in adapter_state.items() if last not in k}
    # lora_B{heads-1} dropped everywhere: the B heads and the route rows disagree, in every module.
    err = adapter_failure(capsys, tmp_path / "routes", tiny, fewer)
    assert "different head counts" in err and f"{heads - 1} heads" in err and f"{heads} heads" in err
    # A consistent adapter of heads - 1 heads (routes cut too) for a model told it has `heads`.
    fewer = {k: v[: heads - 1] if ".lora_route." in k else v for k, v in fewer.items()}
    err = adapter_failure(capsys, tmp_path / "option", tiny, fewer, "--lora-heads", heads)
    assert f"have {heads - 1} heads, the model's I-LoRA has {heads} (--lora-heads)" in err


# -- to-torch of a checkpoint that does not match its config ---------------------------------------


def tampered_copy(converted, folder, change_config=None, change_arrays=None):
    """A copy of the converted checkpoint with its config JSON and / or arrays changed."""
    if change_arrays is None:
        shutil.copytree(converted, folder)
    else:
        flat = orbax_io.restore_flat(converted)
        change_arrays(flat)
        folder.mkdir()
        orbax_io.save_params(str(folder), flat)
        shutil.copy(converted / config_io.CONFIG_FILE, folder / config_io.CONFIG_FILE)
    if change_config is not None:
        d = json.loads((folder / config_io.CONFIG_FILE).read_text())
        change_config(d)
        (folder / config_io.CONFIG_FILE).write_text(json.dumps(d))
    return folder


@pytest.mark.parametrize("fmt,out_name", [("hf", "hf"), ("adapter", "a.bin")])
def test_to_torch_with_a_config_for_another_size(converted, tmp_path, capsys, fmt, out_name):
    def wider_mlp(d):
        d["thinker"]["text"]["intermediate_size"] *= 2

    folder = tampered_copy(converted, tmp_path / "ckpt", change_config=wider_mlp)
    up = orbax_io.params_metadata(converted)["model.layers.0.mlp.up_proj.weight"][0]
    err = failure(capsys, tmp_path / out_name, "to-torch", folder, "--format", fmt, "--out", tmp_path / out_name)
    want = (up[0], up[1] * 2)
    assert f"'model.layers.0.mlp.up_proj.weight': expected shape {want}, found {up}" in err


def test_to_torch_with_tampered_arrays(converted, tmp_path, capsys):
    def tamper(flat):
        del flat["visual.merger.ln_q.weight"]
        flat["audio_tower.conv1.bias"] = flat["audio_tower.conv1.bias"][:-1]

    folder = tampered_copy(converted, tmp_path / "ckpt", change_arrays=tamper)
    meta = orbax_io.params_metadata(converted)
    err = failure(capsys, tmp_path / "hf", "to-torch", folder, "--format", "hf", "--out", tmp_path / "hf")
    bias = meta["audio_tower.conv1.bias"][0]
    assert f"missing 'visual.merger.ln_q.weight': expected shape {meta['visual.merger.ln_q.weight'][0]}" in err
    assert f"'audio_tower.conv1.bias': expected shape {bias}, found {(bias[0] - 1,)}" in err
