"""torch / HF files -> a crab_jax checkpoint (``<out>/params`` Orbax + ``<out>/crab_config.json``).

Pipeline: open every source lazily -> :class:`CrabView` (full Crab names, later sources
override earlier ones) -> config (``--config`` JSON, or sized from the shapes) -> generate
the buffers no file carries -> ONE strict pass of the crab mapping table against the
abstract model (every missing / unexpected / mis-shaped key is named) -> atomic write.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from crab_jax.families.crab import config_io
from crab_jax.checkpoints.convert import orbax_io
from crab_jax.families.crab.convert.assemble import (
    COMPONENTS, ConfigOptions, CrabView, Source, add_generated_buffers, component_sections,
    components_of_sections, expected_variables, hf_clip_source, sections_of, tables_for, whole_crab_config)
from crab_jax.checkpoints.convert.tensor_files import open_hf_dir, open_tensors

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
          "fp16": "float16", "float16": "float16"}
# A whole Crab needs these; the seg module is optional (CrabConfig.seg may be None).
WHOLE_CRAB = ("llm", "visual_encoder", "audio_encoder", "vl_projector", "al_projector")


@dataclasses.dataclass
class Converted:
    flat: dict[str, np.ndarray]
    config_json: dict
    components: list[str]
    notes: list[str]
    ignored: dict[str, str]


def output_dtype(name: str | None):
    if name is None:
        return None
    import ml_dtypes

    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: expected one of {sorted(DTYPES)}")
    return np.dtype(ml_dtypes.bfloat16) if DTYPES[name] == "bfloat16" else np.dtype(DTYPES[name])


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


def convert(sources: Sequence[Source], opts: ConfigOptions, *, config_json: dict | None = None,
            dtype=None, seed: int = 0) -> Converted:
    """Sources -> flat crab_jax arrays + config JSON (raises MappingError naming every bad key)."""
    view = CrabView(sources, cast=dtype)
    present = view.components()
    if config_json is not None:
        sections = config_io.sections_from_json(config_json)
        components = components_of_sections(sections)
        out_json = dict(config_json)
    elif all(c in present for c in WHOLE_CRAB):
        cfg = whole_crab_config(view, opts)
        sections, components = sections_of(cfg), components_of_sections(sections_of(cfg))
        out_json = config_io.crab_config_to_json(cfg)
    else:
        components = present
        sections = component_sections(view, components, opts)
        out_json = config_io.sections_to_json(sections)
    if dtype is not None:
        out_json = dict(out_json, param_dtype=np.dtype(dtype).name)
    add_generated_buffers(view, sections, components, seed)
    table = tables_for(sections, components)
    expected = expected_variables(sections, components)
    flat = table.to_jax(view, {k: (s, d) for k, (s, d, _) in expected.items()},
                        source=" + ".join(s.path for s in sources))
    for k, value in flat.items():  # integer buffers: the model's own dtype (int64 -> int32)
        want = expected[k][1]
        if np.issubdtype(want, np.integer) and value.dtype != want:
            flat[k] = value.astype(want)
    ignored = {f"{s.path}:{k}": why for s in sources for k, why in s.ignored.items()}
    return Converted(flat, out_json, components, view.notes, ignored)


def write_checkpoint(out: str, converted: Converted, *, overwrite: bool = False) -> None:
    """``<out>/params`` + ``<out>/crab_config.json``, atomically."""
    with orbax_io.atomic_dir(out, overwrite=overwrite) as tmp:
        orbax_io.save_params(tmp, converted.flat)
        config_io.save_json(converted.config_json, os.path.join(tmp, config_io.CONFIG_FILE))


def summary(converted: Converted) -> str:
    n = sum(int(np.prod(v.shape)) for v in converted.flat.values())
    nbytes = sum(v.nbytes for v in converted.flat.values())
    dtypes = sorted({str(v.dtype) for v in converted.flat.values()})
    lines = [f"components: {', '.join(converted.components)}",
             f"{len(converted.flat)} arrays, {n:,} values, {nbytes / 2**20:.1f} MiB, dtypes {dtypes}"]
    lines += [f"note: {m}" for m in converted.notes]
    lines += [f"ignored: {k} ({why})" for k, why in converted.ignored.items()]
    return "\n".join(lines)


def read_json_arg(value: str | None) -> dict | None:
    """A JSON object given inline or as a file path (a directory means its config.json)."""
    if value is None:
        return None
    if value.lstrip().startswith("{"):
        return json.loads(value)
    path = os.path.join(value, "config.json") if os.path.isdir(value) else value
    with open(path) as f:
        return json.load(f)
