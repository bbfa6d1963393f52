"""``inspect``: what a checkpoint holds and how it lines up with the mapping tables.

For torch / HF / safetensors files: every tensor (name, shape, dtype), the parameter count,
which component table each key matched (standalone names, or Crab's full names) and the
keys no row matches. For a crab_jax checkpoint: every array, the parameter count, its config
sections, and the check of the arrays against the model that config describes. For a
training run (its workdir or one ``checkpoints/<step>``): its arrays and parameter count.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np

from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.checkpoints.convert import orbax_io
from crab_jax.families.crab.convert.assemble import COMPONENTS, tables_for
from crab_jax.families.crab.convert.crab_table import COMPONENT_PREFIXES
from crab_jax.checkpoints.convert.tensor_files import open_tensors


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


def classify_keys(keys) -> tuple[dict[str, str], list[str]]:
    """key -> ``'<component>'`` (standalone names) or ``'crab:<component>'``; plus unmatched keys."""
    sections = _permissive_sections(keys)
    tables = {c: tables_for(sections, [c]) for c in COMPONENTS}
    matched, unmatched = {}, []
    for key in keys:
        hit = None
        for comp, table in tables.items():
            if table.torch_key_to_jax(key) is not None:
                hit = "crab:" + comp
                break
            prefix = COMPONENT_PREFIXES[comp][0]
            if table.torch_key_to_jax(prefix + key) is not None:
                hit = comp
                break
        if hit is None:
            unmatched.append(key)
        else:
            matched[key] = hit
    return matched, unmatched


def _table_lines(rows) -> list[str]:
    width = max([len(r[0]) for r in rows] + [10])
    return [f"  {name:<{width}}  {str(list(shape)):<20} {dtype}" for name, shape, dtype in rows]


def inspect_path(path: str, *, show_tensors: bool = True) -> str:
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a training run's workdir: its latest step
        from crab_jax.checkpoints.converted import latest_run_step_dir

        path = str(latest_run_step_dir(path))
    if orbax_io.is_checkpoint(path) and not os.path.isfile(os.path.join(path, "crab_config.json")):
        return _inspect_run_step(path, show_tensors)
    if orbax_io.is_checkpoint(path):
        return _inspect_checkpoint(path, show_tensors)
    tensors = open_tensors(path)
    keys = list(tensors)
    rows = [(k, tensors.shape(k), tensors.dtype(k)) for k in keys]
    n = sum(int(np.prod(s)) for _, s, _ in rows)
    matched, unmatched = classify_keys(keys)
    out = [f"{path}: {type(tensors).__name__}, {len(keys)} tensors, {n:,} values, "
           f"dtypes {sorted({str(d) for _, _, d in rows})}"]
    if tensors.extra:
        out.append(f"extra entries: {sorted(tensors.extra)}")
    if show_tensors:
        out += _table_lines(rows)
    out.append("mapping rows matched:")
    out += [f"  {family}: {count} keys" for family, count in sorted(Counter(matched.values()).items())]
    out.append(f"keys no mapping row matches: {len(unmatched)}")
    out += [f"  {k}" for k in unmatched]
    return "\n".join(out)


def _inspect_run_step(path: str, show_tensors: bool) -> str:
    """A training run's checkpoint step: its trainable arrays, in the run's layout."""
    meta = orbax_io.params_metadata(path)
    n = sum(int(np.prod(s)) for s, _ in meta.values())
    out = [f"{path}: crab_jax training-run checkpoint (trainable weights only, in the run's layout: layers "
           f"stacked if it scanned them, vocabulary rows padded), {len(meta)} arrays, {n:,} values, "
           f"dtypes {sorted({str(d) for _, d in meta.values()})}"]
    if show_tensors:
        out += _table_lines([(k, s, d) for k, (s, d) in meta.items()])
    out.append("no mapping rows apply: merge it over its base with `from-run`, then inspect / to-torch the result")
    return "\n".join(out)


def _inspect_checkpoint(path: str, show_tensors: bool) -> str:
    from crab_jax.cli.convert_weights.to_torch import Checkpoint, check_against_config
    from crab_jax.families.crab import config_io
    from crab_jax.families.crab.convert.assemble import components_of_sections

    meta = orbax_io.params_metadata(path)
    config_json = config_io.read_json(path)
    sections = config_io.sections_from_json(config_json)
    components = components_of_sections(sections)
    n = sum(int(np.prod(s)) for s, _ in meta.values())
    out = [f"{path}: crab_jax checkpoint, {len(meta)} arrays, {n:,} values, "
           f"dtypes {sorted({str(d) for _, d in meta.values()})}",
           f"config sections: {[k for k in config_json if k != 'format']}; components: {components}"]
    if show_tensors:
        out += _table_lines([(k, s, d) for k, (s, d) in meta.items()])
    stub = Checkpoint({k: np.empty((0,)) for k in meta}, config_json, sections, components)
    shapes_ok = {k: np.broadcast_to(np.empty((), d), s) for k, (s, d) in meta.items()}
    stub.flat = shapes_ok  # zero-stride views: the check reads shapes only
    try:
        check_against_config(stub)
        out.append("every array matches the config's model (names and shapes)")
    except ValueError as e:
        out.append(str(e))
    table = tables_for(sections, components)
    unmatched = []
    for k in meta:
        try:
            table.rule_for_jax(k)
        except ValueError:
            unmatched.append(k)
    out.append(f"arrays no mapping row matches: {len(unmatched)}")
    out += [f"  {k}" for k in unmatched]
    return "\n".join(out)
