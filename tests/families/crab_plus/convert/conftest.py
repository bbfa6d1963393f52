"""The converter tests' inputs: the fixture's tiny HF Qwen2.5-Omni directory and Crab+ adapter,
the CLI as users call it, one converted checkpoint shared by the module's tests, and helpers
that build (damaged) copies of the fixture files in ``tmp_path`` and compare torch tensors bit
for bit. The fixture files are read with torch / safetensors themselves (not the converter's
readers), so a reader bug cannot hide in both sides of a comparison."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Mapping

import pytest
import torch
from safetensors.torch import load_file, save_file

from crab_jax.cli.convert_weights.cli import main

FAMILY = ("--family", "crab_plus")


def cli(*argv) -> int:
    """``python -m tools.convert_weights --family crab_plus ARGV`` in-process; its exit status."""
    return main([*FAMILY, *(str(a) for a in argv)])


def leftovers(out: pathlib.Path) -> list[str]:
    """What a failed conversion left at ``out`` or beside it (``out.partial-<pid>``)."""
    return sorted(p.name for p in out.parent.glob(out.name + "*"))


@pytest.fixture(scope="session")
def tiny(crab_plus_fixtures_dir, crab_plus_manifest):
    """``(hf dir, finetune_weights.bin, lora alpha)`` of the fixture's tiny model."""
    root = crab_plus_fixtures_dir / "tiny_model"
    lora = crab_plus_manifest["fixtures"]["state_dict_names"]["config"]["tiny_lora"]
    return root / "Qwen2.5-Omni-tiny", root / "checkpoint-1" / "finetune_weights.bin", lora["lora_alpha"]


@pytest.fixture(scope="session")
def converted(tiny, tmp_path_factory) -> pathlib.Path:
    """The tiny base + adapter converted by ``to-jax`` (read-only for the tests)."""
    hf, adapter, alpha = tiny
    out = tmp_path_factory.mktemp("crab_plus_convert") / "ckpt"
    assert cli("to-jax", "--out", out, "--hf", hf, "--adapter", adapter, "--lora-alpha", alpha) == 0
    return out


@pytest.fixture(scope="session")
def hf_state(tiny) -> dict[str, torch.Tensor]:
    """The tiny ``model.safetensors`` (torch key -> tensor; copy the dict before changing it)."""
    return load_file(tiny[0] / "model.safetensors")


@pytest.fixture(scope="session")
def adapter_state(tiny) -> dict[str, torch.Tensor]:
    """The tiny ``finetune_weights.bin`` (torch key -> tensor; copy the dict before changing it)."""
    return torch_load(tiny[1])


def torch_load(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_hf_dir(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory: ``model.safetensors``, or the shards its index lists
    (each listed shard must exist and hold exactly the keys the index gives it)."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return load_file(folder / "model.safetensors")
    weight_map = json.loads(index.read_text())["weight_map"]
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = load_file(folder / shard)
        assert sorted(tensors) == sorted(k for k, v in weight_map.items() if v == shard), shard
        out.update(tensors)
    return out


def bit_differences(actual: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> list[str]:
    """One line per key that is missing, extra, or differs in shape, dtype or any bit."""
    out = [f"missing {k}" for k in reference if k not in actual]
    out += [f"extra {k}" for k in actual if k not in reference]
    for k in reference:
        if k not in actual:
            continue
        a, r = actual[k], reference[k]
        if a.dtype != r.dtype or a.shape != r.shape:
            out.append(f"{k}: {tuple(a.shape)} {a.dtype} != {tuple(r.shape)} {r.dtype}")
        elif not torch.equal(a.contiguous().view(torch.uint8), r.contiguous().view(torch.uint8)):
            out.append(f"{k}: bits differ")
    return out


def write_hf_dir(folder: pathlib.Path, config_from: pathlib.Path, shards: Mapping[str, Mapping[str, torch.Tensor]],
                 absent: Mapping[str, list[str]] = {}) -> pathlib.Path:
    """An HF directory at ``folder``: ``config_from``'s config.json and ``shards`` (file name ->
    tensors); with more than one shard, or ``absent`` ones (file name -> keys the index lists
    in a shard that is not written), a ``model.safetensors.index.json`` too."""
    folder.mkdir(parents=True)
    shutil.copy(config_from / "config.json", folder / "config.json")
    for name, tensors in shards.items():
        save_file(dict(tensors), folder / name)
    if len(shards) > 1 or absent:
        weight_map = {k: name for name, tensors in shards.items() for k in tensors}
        weight_map.update({k: name for name, keys in absent.items() for k in keys})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def write_adapter(folder: pathlib.Path, state: Mapping[str, torch.Tensor], config_from: pathlib.Path) -> pathlib.Path:
    """``folder/finetune_weights.bin`` of ``state`` with ``config_from`` (the training's thinker
    config.json) next to it, as a Crab+ training checkpoint folder has it."""
    folder.mkdir(parents=True)
    shutil.copy(config_from, folder / "config.json")
    torch.save(dict(state), folder / "finetune_weights.bin")
    return folder / "finetune_weights.bin"
