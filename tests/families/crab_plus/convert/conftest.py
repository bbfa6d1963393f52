"""The converter tests' inputs: the fixture's tiny HF Qwen2.5-Omni directory and Crab+ adapter,
the CLI as users call it, and one converted checkpoint shared by the module's tests."""

from __future__ import annotations

import pathlib

import pytest

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
