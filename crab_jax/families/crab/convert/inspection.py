"""``inspect`` for Crab: which component table a torch key matches (standalone names, or
Crab's full names), and the check of a converted checkpoint against its crab_config.json."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from crab_jax.checkpoints.convert.family_converter import CheckpointCheck
from crab_jax.families.crab.convert.crab_table import COMPONENT_PREFIXES, COMPONENTS, full_crab_name, tables_for
from crab_jax.families.crab.convert.to_torch import check_against_config, read_sections
from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig


def _layers(keys, pattern) -> int:
    rx = re.compile(pattern)
    return max([int(m.group(1)) + 1 for k in keys for m in [rx.search(k)] if m] or [0])


def _permissive_sections(keys) -> dict:
    """Configs whose tables match any size (only the layer counts of CLIP / BEATs matter)."""
    clip_layers = max(24, _layers(keys, r"vision_model\.encoder\.layers\.(\d+)\."))
    beats_layers = max(1, _layers(keys, r"encoder\.layers\.(\d+)\.self_attn\.grep_a"))
    return {"llama": LlamaConfig(), "lora": ILoRAConfig(),
            "clip": ClipEncoderConfig(ClipVisionConfig(num_hidden_layers=clip_layers)),
            "beats": BeatsConfig(encoder_layers=beats_layers), "seg": object()}


def classify_keys(keys: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """key -> ``'<component>'`` (standalone names) or ``'crab:<component>'`` (Crab's names, full or
    bare: the bare LLM names are also HF LLaMA's, and read as ``'llm'``); plus unmatched keys."""
    sections = _permissive_sections(keys)
    tables = {c: tables_for(sections, [c]) for c in COMPONENTS}
    matched, unmatched = {}, []
    for key in keys:
        hit = _component_matching(tables, key)
        if hit is None and full_crab_name(key) != key:
            hit = _component_matching(tables, full_crab_name(key), standalone=False)
        if hit is None:
            unmatched.append(key)
        else:
            matched[key] = hit
    return matched, unmatched


def _component_matching(tables, key: str, standalone: bool = True) -> str | None:
    """``'crab:<component>'`` if ``key`` is a full Crab name of it, ``'<component>'`` if (with
    ``standalone``) it is a key of that component's own checkpoint, else None."""
    for comp, table in tables.items():
        if table.torch_key_to_jax(key) is not None:
            return "crab:" + comp
        if standalone and table.torch_key_to_jax(COMPONENT_PREFIXES[comp][0] + key) is not None:
            return comp
    return None


def check_checkpoint(folder: str, arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> CheckpointCheck:
    """The arrays (name -> (shape, dtype)) of a converted checkpoint against its config's model."""
    config_json, sections, components = read_sections(folder)
    try:
        check_against_config(arrays, sections, components)
        problems = None
    except ValueError as e:  # MappingError, or a config whose model cannot be built
        problems = str(e)
    table = tables_for(sections, components)
    unmatched = table.unmatched_jax(arrays)
    return CheckpointCheck(about=f"config sections: {[k for k in config_json if k != 'format']}; "
                                 f"components: {components}", problems=problems, unmatched=unmatched)
