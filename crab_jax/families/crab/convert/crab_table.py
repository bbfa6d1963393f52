"""Crab's full state-dict mapping: the component tables composed under Crab's module prefixes.

Torch names are those of the LoRA-wrapped original (``base_model.model.`` + Crab name),
as in Crab's ``.bin`` files and full state dicts; the pretraining files, saved without the
PEFT wrapper, carry the bare Crab names (``model.…`` / ``lm_head.…``) and are read through
:func:`full_crab_name`. The same tables, un-prefixed, read and
write each component's standalone checkpoint (an HF LLaMA / CLIP folder, a BEATs ``.pt``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from crab_jax.checkpoints.convert.mapping import MappingTable
from crab_jax.families.crab.config_io import sections_of
from crab_jax.families.crab.convert.beats_table import beats_table
from crab_jax.families.crab.convert.clip_table import clip_table
from crab_jax.checkpoints.convert.tables.llama import llama_table
from crab_jax.families.crab.convert.qformer_table import al_projector_table, vl_projector_table
from crab_jax.families.crab.convert.seg_table import seg_table
from crab_jax.families.crab.model import CrabConfig
from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig
from crab_jax.models.llama import LlamaConfig

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
# The first words of the bare Crab (UnifiedForCausalLM) names: what the pretraining stages
# save (visual/audio/segmentation_pretrain.bin, spec A.7.2), as they run without PEFT.
BARE_CRAB_HEADS = ("model.", "lm_head.")
COMPONENTS = tuple(COMPONENT_PREFIXES)  # llm, visual_encoder, audio_encoder, vl_projector, al_projector, seg_module
# The two Q-Former projectors: (component, prefix of its torch attributes, its config section).
PROJECTORS = (("vl_projector", "visual", "visual_qformer"), ("al_projector", "audio", "audio_qformer"))


def full_crab_name(key: str) -> str:
    """A Crab torch name in the full spelling the tables use: a bare Crab name (``model.…``,
    ``lm_head.…``, as pretraining saves it) gets the PEFT wrapper's ``base_model.model.``;
    any other key is returned as is (a full name, or one no table knows)."""
    if key.startswith(BARE_CRAB_HEADS):
        return PEFT_PREFIX + key
    return key


def component_tables(sections: Mapping[str, Any]) -> dict[str, MappingTable]:
    """Each component's own table (un-prefixed: the keys of its standalone checkpoint).

    ``sections``: config section name -> config (``crab_jax.families.crab.config_io``). A
    missing ``llama`` / ``clip`` / ``beats`` section gets the defaults, so the tables of a
    checkpoint's other components can still be built; ``seg_module`` needs its section.
    """
    lora = sections.get("lora")
    tables = {
        "llm": llama_table(sections.get("llama") or LlamaConfig(), lora=lora is not None,
                           **({"targets": lora.targets} if lora is not None else {})),
        "visual_encoder": clip_table((sections.get("clip") or ClipEncoderConfig()).vision),
        "audio_encoder": beats_table(sections.get("beats") or BeatsConfig()),
        "vl_projector": vl_projector_table(),
        "al_projector": al_projector_table(),
    }
    if sections.get("seg") is not None:
        tables["seg_module"] = seg_table(sections["seg"])
    return tables


def _composed(name: str, tables: Mapping[str, MappingTable], components: Sequence[str]) -> MappingTable:
    rules = []
    for component in components:
        torch_prefix, jax_prefix = COMPONENT_PREFIXES[component]
        rules.extend(tables[component].with_prefix(torch_prefix, jax_prefix).rules)
    return MappingTable(name, rules)


def tables_for(sections: Mapping[str, Any], components: Sequence[str]) -> MappingTable:
    """The crab table restricted to ``components`` (full Crab torch names <-> crab_jax paths)."""
    return _composed("crab[" + ",".join(components) + "]", component_tables(sections), components)


def crab_table(cfg: CrabConfig) -> MappingTable:
    """One table for the whole model, keyed like the original's full state dict."""
    tables = component_tables(sections_of(cfg))
    return _composed("crab", tables, list(tables))
