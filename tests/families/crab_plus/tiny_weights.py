"""The Crab+ fixture's tiny thinker weights as one flat state, and filling a module from it.

``tiny_thinker_state`` merges the base checkpoint (``thinker.`` + module path) and the I-LoRA
adapter file (``base_model.model.`` + module path) into ``{thinker-relative torch key: array}``;
``fill_from_rules`` maps the keys under one prefix (``visual.``, ``audio_tower.``, ...) with a
component's mapping rows into the module that sits at that prefix.
"""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import numpy as np
from flax import nnx

from crab_jax.checkpoints.convert.mapping import MappingTable, Rule
from crab_jax.models.state_dict import expected_shapes, load_flat

BASE_FILE = "tiny_model/Qwen2.5-Omni-tiny/model.safetensors"
ADAPTER_FILE = "tiny_model/checkpoint-1/finetune_weights.bin"
BASE_PREFIX, ADAPTER_PREFIX = "thinker.", "base_model.model."


def _strip(state: Mapping[str, np.ndarray], prefix: str, source: str) -> dict[str, np.ndarray]:
    bad = [k for k in state if not k.startswith(prefix)]
    if bad:
        raise ValueError(f"{source}: keys without the {prefix!r} prefix: {bad[:5]}")
    return {k[len(prefix):]: v for k, v in state.items()}


def tiny_thinker_state(fixtures_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """``{key relative to the thinker: float32 array}``: base weights + every adapter tensor."""
    import torch
    from safetensors.numpy import load_file

    fixtures_dir = pathlib.Path(fixtures_dir)
    base = _strip(load_file(fixtures_dir / BASE_FILE), BASE_PREFIX, BASE_FILE)
    raw = torch.load(fixtures_dir / ADAPTER_FILE, map_location="cpu", weights_only=True)
    adapter = _strip({k: v.numpy() for k, v in raw.items()}, ADAPTER_PREFIX, ADAPTER_FILE)
    clash = sorted(set(base) & set(adapter))
    if clash:
        raise ValueError(f"keys in both the base checkpoint and the adapter file: {clash[:5]}")
    return {**base, **adapter}


def without_adapters(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base keys only (for a module built without I-LoRA)."""
    return {k: v for k, v in state.items() if ".lora_" not in k}


def fill_from_rules(module: nnx.Module, rules: Sequence[Rule], state: Mapping[str, np.ndarray], prefix: str) -> None:
    """Loads every key of ``state`` under ``prefix`` into ``module`` (which sits at ``prefix``).

    Strict both ways: a key under the prefix that no row maps, a parameter no key fills, or
    a shape mismatch raises (``MappingError`` / ``ValueError``), so every adapter key is
    known to be consumed.
    """
    subset = {k: v for k, v in state.items() if k.startswith(prefix)}
    expected = {prefix + k: v for k, v in expected_shapes(module).items()}
    arrays = MappingTable(prefix.rstrip("."), rules).to_jax(subset, expected, source=f"tiny thinker {prefix}*")
    load_flat(module, {k[len(prefix):]: v for k, v in arrays.items()})
