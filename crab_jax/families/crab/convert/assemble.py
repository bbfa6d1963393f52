"""User files -> one lazily read Crab state dict (original names), for :mod:`.to_jax`.

Every source is a set of tensors plus the Crab component its keys are relative to
(``None``: keys carry Crab's own names: the full ``base_model.model.`` ones of the
fine-tuning ``.bin`` files and full state dicts, or the bare ``model.`` / ``lm_head.`` ones
of the pretraining files, which are given the full prefix). :class:`CrabView` renames each source's keys into the full
names, and later sources override earlier ones key by key (the avs ``.bin``'s 317-row
``embed_tokens`` replaces the LLaMA folder's 300 rows); every override is recorded.

Keys that exist in no user file are generated, and said so (:attr:`CrabView.notes`):

* the two random Fourier matrices of the seg module (Crab's save functions collect
  parameters only; the original redraws them at every build): drawn from ``N(0, pe_scale²)``
  with the given seed;
* the Q-Former ``position_ids`` buffers (``arange``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Callable, Sequence

import numpy as np

from crab_jax.checkpoints.convert.readers import KeySubset, TensorFile, open_hf_dir, open_tensors
from crab_jax.families.crab.convert.clip_table import split_clip_vision_keys
from crab_jax.families.crab.convert.crab_table import (COMPONENT_PREFIXES, COMPONENTS, CRAB_PREFIX, PROJECTORS,
                                                       full_crab_name)
from crab_jax.families.crab.convert.seg_table import seg_buffer_keys

# crab_jax paths of the seg module's two random Fourier matrices (in no file Crab's training saves).
SEG_BUFFERS = seg_buffer_keys(COMPONENT_PREFIXES["seg_module"][1])


@dataclasses.dataclass
class Source:
    """One user file: ``tensors`` keyed relative to ``component`` (None: Crab's own names, full or bare)."""

    path: str
    tensors: Mapping[str, np.ndarray]
    component: str | None = None
    config: dict | None = None  # HF config.json or BEATs cfg
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> why it is not loaded


def hf_clip_source(path: str, config: dict, tensors: TensorFile) -> Source:
    """A CLIP (vision) folder: keys that are not part of the vision tower are set aside, with reasons."""
    keep, ignored = split_clip_vision_keys(tensors.keys())
    return Source(path, KeySubset(tensors, keep), "visual_encoder", config, ignored)


def crab_name(component: str | None, key: str) -> str:
    return full_crab_name(key) if component is None else COMPONENT_PREFIXES[component][0] + key


def component_of(crab_key: str) -> str | None:
    """The component a full Crab torch name belongs to (None if none)."""
    best, best_len = None, -1
    for name, (prefix, _) in COMPONENT_PREFIXES.items():
        if crab_key.startswith(prefix) and len(prefix) > best_len:
            best, best_len = name, len(prefix)
    if best == "llm" and crab_key.startswith(CRAB_PREFIX) and not re.match(
            re.escape(CRAB_PREFIX) + r"(embed_tokens|layers|norm)\.", crab_key):
        return None  # a Crab module the LLM table does not know (reported as unexpected)
    return best


class CrabView(Mapping):
    """Lazy ``full Crab torch name -> array`` over several sources (later ones win).

    ``cast`` (a numpy float dtype) is applied to floating tensors as they are read, so the
    converted model is only ever held in the output dtype.
    """

    def __init__(self, sources: Sequence[Source], cast: np.dtype | None = None):
        self.sources = list(sources)
        self.cast = cast
        self._origin: dict[str, tuple[Source, str]] = {}
        self._generated: dict[str, Callable[[], np.ndarray]] = {}
        self.notes: list[str] = []
        for src in self.sources:
            for key in src.tensors.keys():
                name = crab_name(src.component, key)
                if name in self._origin:
                    prev, prev_key = self._origin[name]
                    self.notes.append(f"{name}: {src.path} {_shape(src.tensors, key)} overrides "
                                      f"{prev.path} {_shape(prev.tensors, prev_key)}")
                self._origin[name] = (src, key)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._generated:
            return tuple(self._generated[name]().shape)
        src, key = self._origin[name]
        return _shape(src.tensors, key)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self}

    def source_file(self, name: str) -> str:
        """The user's file that holds ``name`` (the shard, for an HF index); for conversion errors."""
        if name in self._generated:
            return "generated: in no source file"
        src, key = self._origin[name]
        where = getattr(src.tensors, "source_file", None)
        return where(key) if where is not None else src.path

    def generate(self, name: str, make: Callable[[], np.ndarray], note: str) -> None:
        """Adds a key found in no source (``make`` builds it on read)."""
        self._generated[name] = make
        self.notes.append(f"{name}: in no source file; {note}")

    def source_configs(self) -> dict[str, dict]:
        """Component -> the config its last source carried (HF config.json, BEATs cfg)."""
        return {s.component: s.config for s in self.sources if s.component is not None and s.config is not None}

    def components(self) -> list[str]:
        present = {component_of(k) for k in self._origin}
        return [c for c in COMPONENTS if c in present]

    def __getitem__(self, name):
        if name in self._generated:
            value = self._generated[name]()
        else:
            src, key = self._origin[name]
            value = np.asarray(src.tensors[key])
        floating = np.issubdtype(value.dtype, np.floating) or _is_bf16(value)
        if self.cast is not None and floating and value.dtype != self.cast:
            value = value.astype(self.cast)
        return value

    def __iter__(self):
        yield from self._origin
        yield from (k for k in self._generated if k not in self._origin)

    def __len__(self):
        return len(set(self._origin) | set(self._generated))


def _is_bf16(a) -> bool:
    return a.dtype.name == "bfloat16"


def _shape(tensors, key) -> tuple[int, ...]:
    shape = getattr(tensors, "shape", None)
    if callable(shape):
        return tuple(shape(key))
    return tuple(np.shape(tensors[key]))


def add_generated_buffers(view: CrabView, sections, components, seed: int) -> None:
    """Generates the buffers that no user file carries (see the module docstring)."""
    if "seg_module" in components:
        seg = sections["seg"]
        half = seg.prompt_embed_dim // 2
        for i, jax_key in enumerate(SEG_BUFFERS):
            name = CRAB_PREFIX + jax_key
            if name not in view:
                def draw(i=i):
                    rng = np.random.default_rng([seed, i])
                    return (seg.pe_scale * rng.standard_normal((2, half))).astype(np.float32)
                view.generate(name, draw, f"drawn from N(0, {seg.pe_scale}^2) with --seed {seed} "
                                          "(the original redraws it at every build)")
    for comp, prefix, qcfg in PROJECTORS:
        name = f"{CRAB_PREFIX}{comp}.{prefix}_Qformer.bert.embeddings.position_ids"
        if comp in components and name not in view:
            n = sections[qcfg].max_position_embeddings
            view.generate(name, lambda n=n: np.arange(n, dtype=np.int64)[None], f"arange({n}) (a fixed buffer)")


def gather_sources(*, llama: str | None = None, clip: str | None = None, beats: str | None = None,
                   crab: Sequence[str] = (), component: Sequence[str] = ()) -> list[Source]:
    """Sources in override order: LLaMA, CLIP, BEATs, ``--component``s, then Crab files in the given order."""
    sources: list[Source] = []
    if llama:
        config, tensors = open_hf_dir(llama)
        if config.get("model_type") not in (None, "llama"):
            raise ValueError(f"{llama}: --llama expects a LLaMA folder, config.json has model_type "
                             f"{config.get('model_type')!r}")
        sources.append(Source(llama, tensors, "llm", config))
    if clip:
        config, tensors = open_hf_dir(clip)
        sources.append(hf_clip_source(clip, config, tensors))
    if beats:
        tensors = open_tensors(beats)
        if "cfg" not in tensors.extra:
            raise ValueError(f"{beats}: --beats expects a BEATs checkpoint, a dict with 'cfg' and 'model'")
        sources.append(Source(beats, tensors, "audio_encoder", dict(tensors.extra["cfg"])))
    for spec in component:
        name, sep, path = spec.partition("=")
        if not sep or name not in COMPONENTS:
            raise ValueError(f"--component {spec!r}: expected NAME=PATH with NAME one of {list(COMPONENTS)}")
        tensors = open_tensors(path)
        sources.append(Source(path, tensors, name, dict(tensors.extra.get("cfg", {})) or None))
    for path in crab:
        sources.append(Source(path, open_tensors(path), None))
    if not sources:
        raise ValueError("no source given: pass at least one of --llama, --clip, --beats, --crab, --component")
    return sources
