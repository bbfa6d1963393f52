"""What a converted Crab checkpoint must hold: each component's variables, built abstractly.

A checkpoint holds a whole Crab or some of its components; its config JSON has one section
per sub-config, and :data:`COMPONENT_SECTIONS` says which sections size which component.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from crab_jax.families.crab.convert.crab_table import COMPONENTS
from crab_jax.models.beats import Beats
from crab_jax.models.clip import ClipVisualEncoder
from crab_jax.models.llama import LlamaForCausalLM
from crab_jax.models.qformer import AudioProjector, VisualProjector
from crab_jax.models.rngs import make_rngs
from crab_jax.models.seg.module import SegModule
from crab_jax.models.state_dict import abstract_module, flat_variables
from crab_jax.parallel.sharding import Buffer

# Config sections that size each component (the first one is present iff the component is).
COMPONENT_SECTIONS = {
    "llm": ("llama", "lora"), "visual_encoder": ("clip",), "audio_encoder": ("beats",),
    "vl_projector": ("visual_qformer",), "al_projector": ("audio_qformer",), "seg_module": ("seg",),
}


def components_of_sections(sections: Mapping[str, Any]) -> list[str]:
    """The components a checkpoint with these config sections holds, in :data:`COMPONENTS` order."""
    return [c for c in COMPONENTS if sections.get(COMPONENT_SECTIONS[c][0]) is not None]


def _module_ctors(sections) -> dict[str, Callable]:
    return {
        "llm": lambda: LlamaForCausalLM(sections["llama"], sections.get("lora"), rngs=make_rngs(0)),
        "visual_encoder": lambda: ClipVisualEncoder(sections["clip"], rngs=make_rngs(0)),
        "audio_encoder": lambda: Beats(sections["beats"], rngs=make_rngs(0)),
        "vl_projector": lambda: VisualProjector(sections["visual_qformer"], rngs=make_rngs(0)),
        "al_projector": lambda: AudioProjector(sections["audio_qformer"], rngs=make_rngs(0)),
        "seg_module": lambda: SegModule(sections["seg"], rngs=make_rngs(0)),
    }


def expected_variables(sections: Mapping[str, Any], components: Sequence[str]) -> dict[str, tuple]:
    """crab_jax path -> (shape, dtype, is_buffer) of the components, built without allocating."""
    out = {}
    for name in components:
        keys = tuple(s for s in COMPONENT_SECTIONS[name] if s in sections)
        out.update(_component_variables(name, tuple((s, sections[s]) for s in keys)))
    return out


@functools.lru_cache(maxsize=16)
def _component_variables(name: str, sections: tuple) -> dict[str, tuple]:
    """Cached: building a component abstractly takes seconds for the whole LLM."""
    module = abstract_module(_module_ctors(dict(sections))[name])
    return {f"{name}.{k}": (tuple(v.shape), np.dtype(v.dtype), isinstance(v, Buffer))
            for k, v in flat_variables(module).items()}
