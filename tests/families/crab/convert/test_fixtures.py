"""Weight conversion on the original's files (fixtures): assembly from user files, and
bit-exact torch -> jax -> torch / jax -> torch -> jax round trips through the CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flax import nnx

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.cli.convert_weights.cli import main
from crab_jax.families.crab import config_io
from crab_jax.families.crab.convert.assemble import SEG_BUFFERS
from crab_jax.families.crab.convert.crab_config import crab_config_from_original
from crab_jax.families.crab.convert.crab_table import CRAB_PREFIX, crab_table
from crab_jax.checkpoints.convert.tables.ilora import ilora_table
from crab_jax.families.crab.model import Crab
from crab_jax.models.state_dict import abstract_module, expected_shapes

pytestmark = pytest.mark.parity


def assert_same_state(actual, reference, skip=()):
    """Same keys, dtypes and bits."""
    assert sorted(actual) == sorted(reference)
    for k in reference:
        if k in skip:
            continue
        a, r = np.asarray(actual[k]), np.asarray(reference[k])
        assert a.dtype == r.dtype and a.shape == r.shape, f"{k}: {a.shape} {a.dtype} != {r.shape} {r.dtype}"
        assert np.array_equal(a.view(np.uint8), r.view(np.uint8)), f"{k}: values differ"


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def torch_file(path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in obj.items()}


def strict_module(state) -> torch.nn.Module:
    """A module whose state_dict keys and shapes are exactly ``state``'s (the original's key set)."""
    root = torch.nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, torch.nn.Module())
            node = node._modules[part]
        node.register_buffer(leaf, torch.zeros(tuple(value.shape), dtype=torch.from_numpy(np.asarray(value)[:0]).dtype))
    return root


@pytest.fixture(scope="module")
def crab_run(converted_crab):
    return converted_crab


@pytest.fixture(scope="module")
def crab_dir(crab_run):
    return crab_run[0]


def fixture_config(fixtures_dir, manifest):
    """The CrabConfig built the way tests/models/test_crab.py builds it (manifest values)."""
    c = manifest["fixtures"]["crab_full"]["config"]
    f = fixtures_dir / "crab_full"
    sd = open_tensors(f / "full_state_dict.safetensors")
    return crab_config_from_original(
        {k: sd.shape(k) for k in sd}, llama_config=c["llama_config"], clip_config=c["clip_vision_config"],
        beats_cfg=c["beats_cfg"], bert_config=c["bert_config"], select_layer_list=c["select_layer_list"],
        select_feature=c["select_feature"], special_token_ids=c["special_token_ids"],
        pad_token_id=c["pad_token_id"], lora=c["lora"], seg=c["seg"])


def test_assembled_model_equals_full_state_dict(crab_run, fixtures_dir, manifest):
    crab_dir, out = crab_run
    for buffer in SEG_BUFFERS:  # the two buffers in no user file are drawn, and the output says so
        assert f"{buffer}: in no source file; drawn" in out and "--seed 7" in out
    cfg = config_io.load_crab_config(crab_dir)
    ref = fixture_config(fixtures_dir, manifest)
    same_targets = dataclasses.replace(ref.lora, targets=cfg.lora.targets)  # an unordered set in the original
    assert sorted(ref.lora.targets) == sorted(cfg.lora.targets)
    assert cfg == dataclasses.replace(ref, lora=same_targets)
    flat = orbax_io.restore_flat(crab_dir)
    model_shapes = expected_shapes(abstract_module(lambda: Crab(cfg, rngs=nnx.Rngs(0))))
    assert {k: tuple(v.shape) for k, v in flat.items()} == {k: s for k, (s, _) in model_shapes.items()}
    full = open_tensors(fixtures_dir / "crab_full" / "full_state_dict.safetensors")
    back = crab_table(cfg).to_torch(flat)
    assert_same_state(back, {k: full[k] for k in full}, skip={CRAB_PREFIX + b for b in SEG_BUFFERS})
    for b in SEG_BUFFERS:
        assert back[CRAB_PREFIX + b].shape == full.shape(CRAB_PREFIX + b)


def test_crab_bins_export_bit_exact_and_load_strict(crab_dir, fixtures_dir, tmp_path):
    f = fixtures_dir / "crab_full"
    for subset, reference in (("finetune", "finetune_weights.bin"), ("avs", "avs_finetune_weights.bin")):
        assert cli("to-torch", crab_dir, "--format", "crab-bin", "--subset", subset, "--out", tmp_path / reference) == 0
        assert_same_state(torch_file(tmp_path / reference), torch_file(f / reference))
    assert cli("to-torch", crab_dir, "--format", "crab-bin", "--subset", "all", "--out", tmp_path / "all.bin") == 0
    exported = torch.load(tmp_path / "all.bin", weights_only=True)
    full = open_tensors(f / "full_state_dict.safetensors")
    module = strict_module({k: full[k] for k in full})
    module.load_state_dict(exported, strict=True)  # the original's key set, shapes and dtypes
    for k in full:
        if k.removeprefix(CRAB_PREFIX) not in SEG_BUFFERS:
            assert np.array_equal(exported[k].numpy(), full[k]), k


def test_full_state_dict_torch_jax_torch_and_jax_torch_jax(crab_dir, fixtures_dir, tmp_path):
    """full_state_dict.safetensors -> jax -> torch is bit-exact (buffers included), and so is
    jax -> torch -> jax."""
    full_path = fixtures_dir / "crab_full" / "full_state_dict.safetensors"
    assert cli("to-jax", "--out", tmp_path / "j1", "--crab", full_path, "--config", crab_dir) == 0
    assert cli("to-torch", tmp_path / "j1", "--format", "crab-bin", "--out", tmp_path / "t1.bin") == 0
    full = open_tensors(full_path)
    assert_same_state(torch_file(tmp_path / "t1.bin"), {k: full[k] for k in full})
    assert cli("to-jax", "--out", tmp_path / "j2", "--crab", tmp_path / "t1.bin", "--config", crab_dir) == 0
    assert_same_state(orbax_io.restore_flat(tmp_path / "j2"), orbax_io.restore_flat(tmp_path / "j1"))


def test_hf_and_beats_exports_round_trip(crab_dir, fixtures_dir, tmp_path):
    f = fixtures_dir / "crab_full"
    assert cli("to-torch", crab_dir, "--format", "beats-pt", "--out", tmp_path / "beats.pt") == 0
    ours, ref = torch.load(tmp_path / "beats.pt", weights_only=True), torch.load(f / "beats_tiny.pt", weights_only=True)
    assert_same_state({k: v.numpy() for k, v in ours["model"].items()}, {k: v.numpy() for k, v in ref["model"].items()})
    assert all(ours["cfg"][k] == v for k, v in ref["cfg"].items())
    assert cli("to-torch", crab_dir, "--format", "hf-clip", "--out", tmp_path / "clip") == 0
    ref = open_tensors(f / "clip_vision")
    assert_same_state(dict(open_tensors(tmp_path / "clip").items()), dict(ref.items()))
    assert cli("to-torch", crab_dir, "--format", "hf-llama", "--without-lora", "--out", tmp_path / "llama") == 0
    ours = dict(open_tensors(tmp_path / "llama").items())
    ref = open_tensors(f / "llama_hf")
    avs = torch_file(f / "avs_finetune_weights.bin")
    for k in ("model.embed_tokens.weight", "lm_head.weight"):  # resized: rows of the avs file
        assert np.array_equal(ours.pop(k), avs["base_model.model." + k])
    assert_same_state(ours, {k: ref[k] for k in ref if k not in ("model.embed_tokens.weight", "lm_head.weight")})


@pytest.mark.parametrize("name,file,args", [
    ("audio_encoder", "beats/beats_tiny.pt", ()),
    ("vl_projector", "qformer/vl_projector.safetensors", ("--bert-config", "qformer/bert_config")),
    ("al_projector", "qformer/al_projector.safetensors", ("--bert-config", "qformer/bert_config")),
    ("seg_module", "seg_module/seg_module.safetensors", ()),
])
def test_component_state_dicts_round_trip(fixtures_dir, tmp_path, name, file, args):
    args = [fixtures_dir / a if "/" in str(a) else a for a in args]
    src = fixtures_dir / file
    suffix = ".safetensors" if file.endswith(".safetensors") else ".bin"
    assert cli("to-jax", "--out", tmp_path / "j", "--component", f"{name}={src}", *args) == 0
    assert cli("to-torch", tmp_path / "j", "--format", "component", "--component", name,
               "--out", tmp_path / f"t{suffix}") == 0
    ref = open_tensors(src)
    back = open_tensors(tmp_path / f"t{suffix}")
    assert_same_state(dict(back.items()), dict(ref.items()))
    assert cli("to-jax", "--out", tmp_path / "j2", "--component", f"{name}={tmp_path / f't{suffix}'}",
               "--config", tmp_path / "j") == 0
    assert_same_state(orbax_io.restore_flat(tmp_path / "j2"), orbax_io.restore_flat(tmp_path / "j"))


def test_ilora_layer_round_trip_through_orbax(fixtures_dir, tmp_path):
    sd = open_tensors(fixtures_dir / "ilora_linear" / "ilora_linear.safetensors")
    flat = ilora_table().to_jax(sd)
    orbax_io.save_params(tmp_path, flat)
    back = ilora_table().to_torch(orbax_io.restore_flat(tmp_path))
    assert_same_state(back, {k: sd[k] for k in sd})


def test_inspect_reports_matches(crab_dir, fixtures_dir, capsys):
    assert cli("inspect", fixtures_dir / "crab_full" / "finetune_weights.bin") == 0
    out = capsys.readouterr().out
    assert "keys no mapping row matches: 0" in out and "crab:vl_projector" in out
    assert cli("inspect", "--summary", crab_dir) == 0
    out = capsys.readouterr().out
    assert "every array matches the config's model" in out and "arrays no mapping row matches: 0" in out
