"""CrabConfig <-> JSON, the config file next to a converted checkpoint (``crab_config.json``).

The JSON is one object of *sections*, one per sub-config, plus Crab's own fields::

    {"format": "crab_jax.config/1",
     "llama": {...LlamaConfig fields...}, "clip": {"vision": {...}, "select_layer_list": [...], ...},
     "beats": {...}, "visual_qformer": {...}, "audio_qformer": {...},
     "lora": {...} | null, "seg": {...} | null,
     "crab": {"special_token_ids": {...}, "pad_token_id": 2, "llm_tap": -1, "seg_taps": [0, 1],
              "mask_position_offset": -1, "dtype": "float32"}}

A checkpoint of only some components (e.g. a converted BEATs ``.pt``) carries only their
sections: :func:`sections_from_json` reads any subset, :func:`crab_config_from_json` needs
all of them and names what is missing. Dtypes are written by name (``"bfloat16"``), tuples
as lists; both are restored on reading, so ``from_json(to_json(cfg)) == cfg``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

from crab_jax.config.dataclass_json import dataclass_kwargs, to_plain

from crab_jax.families.crab.model import CrabConfig
from crab_jax.io.paths import as_path
from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qformer import QFormerConfig
from crab_jax.models.seg.config import SegConfig

FORMAT = "crab_jax.config/1"
CONFIG_FILE = "crab_config.json"
# Section name -> config class (``clip`` nests a ClipVisionConfig under ``vision``).
SECTIONS = {
    "llama": LlamaConfig,
    "clip": ClipEncoderConfig,
    "beats": BeatsConfig,
    "visual_qformer": QFormerConfig,
    "audio_qformer": QFormerConfig,
    "lora": ILoRAConfig,
    "seg": SegConfig,
}
OPTIONAL_SECTIONS = ("lora", "seg")  # may be null in a full config
_CRAB_FIELDS = ("special_token_ids", "pad_token_id", "llm_tap", "seg_taps", "mask_position_offset", "dtype")


def _fields(cls, d: Mapping[str, Any], section: str) -> dict[str, Any]:
    return dataclass_kwargs(cls, d, f"config section {section!r}")


def section_to_config(name: str, d: Mapping[str, Any] | None):
    """One JSON section -> its config object (None stays None)."""
    if d is None:
        return None
    if name not in SECTIONS:
        raise ValueError(f"unknown config section {name!r}; known: {sorted(SECTIONS)}")
    cls = SECTIONS[name]
    if cls is ClipEncoderConfig:
        d = dict(d)
        vision = ClipVisionConfig(**_fields(ClipVisionConfig, d.pop("vision", {}), "clip.vision"))
        return ClipEncoderConfig(vision=vision, **_fields(ClipEncoderConfig, d, name))
    return cls(**_fields(cls, d, name))


def sections_to_json(sections: Mapping[str, Any], crab: Mapping[str, Any] | None = None) -> dict:
    """Sub-configs by section name (any subset) -> the JSON object."""
    out: dict[str, Any] = {"format": FORMAT}
    for name, cfg in sections.items():
        if name not in SECTIONS:
            raise ValueError(f"unknown config section {name!r}; known: {sorted(SECTIONS)}")
        out[name] = to_plain(cfg)
    if crab is not None:
        out["crab"] = to_plain(crab)
    return out


def sections_of(cfg: CrabConfig) -> dict[str, Any]:
    """A whole CrabConfig's sub-configs by section name."""
    return {name: getattr(cfg, name) for name in SECTIONS}


def crab_config_to_json(cfg: CrabConfig) -> dict:
    return sections_to_json(sections_of(cfg), {k: getattr(cfg, k) for k in _CRAB_FIELDS})


def sections_from_json(d: Mapping[str, Any]) -> dict[str, Any]:
    """The sub-configs present in ``d`` (section name -> config object or None)."""
    if d.get("format") != FORMAT:
        raise ValueError(f"not a crab_jax config: format {d.get('format')!r}, expected {FORMAT!r}")
    return {name: section_to_config(name, d[name]) for name in SECTIONS if name in d}


def crab_config_from_json(d: Mapping[str, Any]) -> CrabConfig:
    sections = sections_from_json(d)
    missing = [n for n in SECTIONS if n not in sections or (sections[n] is None and n not in OPTIONAL_SECTIONS)]
    if "crab" not in d:
        missing.append("crab")
    if missing:
        raise ValueError(f"config is not a whole Crab: missing section(s) {missing} "
                         f"(it has {sorted(k for k in d if k != 'format')})")
    crab = dict(d["crab"])
    crab["seg_taps"] = tuple(crab.get("seg_taps", (0, 1)))
    crab["dtype"] = jnp.dtype(crab.get("dtype", "float32"))
    return CrabConfig(**sections, **crab)


def read_json(path: str | os.PathLike) -> dict:
    """``path`` (local or ``gs://``): the JSON file or a checkpoint directory holding ``crab_config.json``."""
    path = as_path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no crab_jax config file (write one with: python -m tools.convert_weights "
                                "to-jax ...)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_crab_config(path: str | os.PathLike) -> CrabConfig:
    """``path`` (a ``crab_config.json`` or the checkpoint directory) -> the whole CrabConfig."""
    try:
        return crab_config_from_json(read_json(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e

