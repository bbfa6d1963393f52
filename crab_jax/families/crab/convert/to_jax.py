"""``to-jax`` for Crab: torch / HF files -> a converted checkpoint (flat arrays + crab_config.json).

Pipeline: open every source lazily -> :class:`~.assemble.CrabView` (full Crab names, later
sources override earlier ones) -> config (``--config`` JSON, or sized from the shapes) ->
generate the buffers no file carries -> ONE strict pass of the crab mapping table against
the abstract model (every missing / unexpected / mis-shaped key is named). The CLI writes
the result atomically.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from crab_jax.checkpoints.convert.output import Converted
from crab_jax.checkpoints.convert.readers import open_tensors, read_json_arg
from crab_jax.families.crab import config_io
from crab_jax.families.crab.convert.assemble import CrabView, Source, add_generated_buffers, gather_sources
from crab_jax.families.crab.convert.crab_config import ConfigOptions, component_sections, whole_crab_config
from crab_jax.families.crab.convert.crab_table import tables_for
from crab_jax.families.crab.convert.variables import components_of_sections, expected_variables

# A whole Crab needs these; the seg module is optional (CrabConfig.seg may be None).
WHOLE_CRAB = ("llm", "visual_encoder", "audio_encoder", "vl_projector", "al_projector")


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
        cfg = whole_crab_config(view.shapes(), view.source_configs(), opts)
        sections = config_io.sections_of(cfg)
        components = components_of_sections(sections)
        out_json = config_io.crab_config_to_json(cfg)
    else:
        components = present
        sections = component_sections(view.shapes(), view.source_configs(), components, opts)
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


def config_options(args: argparse.Namespace) -> ConfigOptions:
    """``to-jax``'s model-config options (:func:`crab_jax.families.crab.convert.arguments.add_to_jax_arguments`)."""
    if args.beats_cfg and args.beats_cfg.endswith((".pt", ".bin")):
        beats_cfg = dict(open_tensors(args.beats_cfg).extra.get("cfg") or {}) or None
    else:
        beats_cfg = read_json_arg(args.beats_cfg)
    return ConfigOptions(
        bert_config=read_json_arg(args.bert_config), select_layer_list=tuple(args.select_layers),
        select_feature=args.select_feature, pad_token_id=args.pad_token_id, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, special_token_ids=read_json_arg(args.special_tokens),
        seg=read_json_arg(args.seg_config), llama_config=read_json_arg(args.llama_config),
        clip_config=read_json_arg(args.clip_config), beats_cfg=beats_cfg)


def to_jax(args: argparse.Namespace, dtype: np.dtype | None) -> Converted:
    """The parsed ``to-jax`` options -> the converted checkpoint."""
    opts = config_options(args)
    config_json = config_io.read_json(args.config) if args.config else None
    sources = gather_sources(llama=args.llama, clip=args.clip, beats=args.beats, crab=args.crab,
                             component=args.component)
    return convert(sources, opts, config_json=config_json, dtype=dtype, seed=args.seed)
