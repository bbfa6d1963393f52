"""Crab's full state-dict mapping: the family tables composed under Crab's module prefixes.

Torch names are those of the LoRA-wrapped original (``base_model.model.`` + Crab name),
as in Crab's ``.bin`` files and full state dicts.
"""

from __future__ import annotations

from crab_jax.families.crab.model import CrabConfig
from crab_jax.families.crab.convert.beats_table import beats_table
from crab_jax.families.crab.convert.clip_table import clip_table
from crab_jax.families.crab.convert.llama_table import llama_table
from crab_jax.checkpoints.convert.mapping import MappingTable
from crab_jax.families.crab.convert.qformer_table import al_projector_table, vl_projector_table
from crab_jax.families.crab.convert.seg_table import seg_table

PEFT_PREFIX = "base_model.model."
CRAB_PREFIX = PEFT_PREFIX + "model."

# (torch prefix, crab_jax prefix) of each component.
COMPONENT_PREFIXES = {
    "llm": (PEFT_PREFIX, "llm."),
    "visual_encoder": (CRAB_PREFIX + "visual_encoder.vision_tower.", "visual_encoder.vision_tower."),
    "audio_encoder": (CRAB_PREFIX + "audio_encoder.audio_encoder.", "audio_encoder."),
    "vl_projector": (CRAB_PREFIX + "vl_projector.", "vl_projector."),
    "al_projector": (CRAB_PREFIX + "al_projector.", "al_projector."),
    "seg_module": (CRAB_PREFIX + "seg_module.", "seg_module."),
}


def component_tables(cfg: CrabConfig) -> dict[str, MappingTable]:
    """Each component's own table (un-prefixed: the keys of its standalone checkpoint)."""
    tables = {
        "llm": llama_table(cfg.llama, lora=cfg.lora is not None,
                           **({"targets": cfg.lora.targets} if cfg.lora is not None else {})),
        "visual_encoder": clip_table(cfg.clip.vision),
        "audio_encoder": beats_table(cfg.beats),
        "vl_projector": vl_projector_table(),
        "al_projector": al_projector_table(),
    }
    if cfg.seg is not None:
        tables["seg_module"] = seg_table(cfg.seg)
    return tables


def crab_table(cfg: CrabConfig) -> MappingTable:
    """One table for the whole model, keyed like the original's full state dict."""
    rules = []
    for name, table in component_tables(cfg).items():
        torch_prefix, jax_prefix = COMPONENT_PREFIXES[name]
        rules.extend(table.with_prefix(torch_prefix, jax_prefix).rules)
    return MappingTable("crab", rules)
