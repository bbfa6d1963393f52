"""``to-jax`` for Crab+: the HF Qwen2.5-Omni directory and / or ``finetune_weights.bin`` ->
a converted checkpoint (flat arrays + ``crab_plus_config.json``).

Pipeline: open both files lazily -> the model config (``--config``, else the HF directory's
``config.json``, else the ``config.json`` the training saved next to the adapter file) and
its I-LoRA (rank / heads from the adapter's shapes, alpha from the options: no shape holds
it) -> check every key and shape against the abstract model from the files' headers alone
(each missing / unexpected / mis-shaped key named with both shapes, before any tensor is
read) -> ONE strict pass of the thinker table, reading one tensor at a time (cast to
``--dtype`` as it is read). The CLI writes the result atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from typing import Sequence

import ml_dtypes
import numpy as np

from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.output import Converted
from crab_jax.checkpoints.convert.readers import open_tensors, read_json_arg
from crab_jax.families.crab_plus.convert import config_io
from crab_jax.families.crab_plus.convert.adapter_files import adapter_layout, layout_problems
from crab_jax.families.crab_plus.convert.hf_files import (HFCheckpoint, absent_shard_problems, open_hf_checkpoint,
                                                          skipped_notes)
from crab_jax.families.crab_plus.convert.thinker_table import (raise_problems, thinker_table, torch_layout,
                                                               torch_shape_problems)
from crab_jax.families.crab_plus.convert.variables import canonical_config, expected_variables, replace_towers
from crab_jax.families.crab_plus.hf_config import thinker_config_from_hf
from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.models.ilora import ILoRAConfig

DEFAULT_LORA_DROPOUT = 0.1  # Crab+'s training (finetune_omni.py); dropout acts in training only


@dataclasses.dataclass(frozen=True)
class LoraOptions:
    """``--lora-*``: None = read from the adapter's shapes (r, heads) or the ``--config`` (all)."""

    r: int | None = None
    heads: int | None = None
    alpha: float | None = None
    dropout: float | None = None

    def given(self) -> dict[str, object]:
        return {f"--lora-{k}": v for k, v in (("r", self.r), ("heads", self.heads), ("alpha", self.alpha)) if v is not None}


@dataclasses.dataclass
class ConfigSource:
    """Where the model config came from: an HF config dict, or a converted checkpoint's config."""

    path: str
    hf_config: dict | None
    checkpoint: config_io.CheckpointConfig | None = None


def is_floating(dtype) -> bool:
    """Float dtypes, bfloat16 included (numpy does not count it as floating)."""
    return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == ml_dtypes.bfloat16


class SourceView(Mapping):
    """Lazy ``torch key -> array`` over the opened files (their keys are disjoint: ``thinker.`` /
    ``base_model.model.``), floating tensors cast to ``cast`` as they are read."""

    def __init__(self, sources: Sequence[Mapping], cast: np.dtype | None = None):
        self._origin = {k: s for s in sources for k in s.keys()}
        self.cast = cast

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._origin[key].shape(key))

    def source_file(self, key: str) -> str:
        """The opened file that holds ``key`` (the shard, for an HF index); for conversion errors."""
        src = self._origin[key]
        return src.source_file(key) if hasattr(src, "source_file") else getattr(src, "path", "?")

    def __getitem__(self, key):
        value = np.asarray(self._origin[key][key])
        if self.cast is not None and is_floating(value.dtype) and value.dtype != self.cast:
            value = value.astype(self.cast)
        return value

    def __iter__(self):
        return iter(self._origin)

    def __len__(self):
        return len(self._origin)


def config_source(config: str | None, hf: HFCheckpoint | None, adapter: str | None) -> ConfigSource:
    """``--config`` (a crab_plus_config.json / converted checkpoint, or an HF config.json / dir / inline
    JSON), else the HF directory's config.json, else the config.json next to the adapter file."""
    if config is not None:
        plus = os.path.join(config, config_io.CONFIG_FILE) if os.path.isdir(config) else config
        if os.path.isfile(plus) and os.path.basename(plus) == config_io.CONFIG_FILE:
            ckpt = config_io.load_config(plus)
            return ConfigSource(plus, ckpt.hf_config, ckpt)
        return ConfigSource(config, read_json_arg(config))
    if hf is not None:
        return ConfigSource(os.path.join(hf.path, "config.json"), hf.config)
    if adapter is not None:
        sibling = os.path.join(os.path.dirname(os.path.abspath(adapter)), "config.json")
        if os.path.isfile(sibling):
            return ConfigSource(sibling, read_json_arg(sibling))
        raise FileNotFoundError(f"{adapter}: no config.json next to it (the training saves the thinker config "
                                "there): pass --config (an HF config.json, or a crab_plus_config.json)")
    raise ValueError("to-jax needs --hf DIR and / or --adapter FILE")


def resolve_lora(src: ConfigSource, opts: LoraOptions, layout, adapter: str | None) -> tuple[ILoRAConfig | None, list[str]]:
    """The model's I-LoRA and notes on where each value came from; raises when a value is in no
    source or the adapter file is for another rank / head count (saying which)."""
    known = src.checkpoint.thinker.lora if src.checkpoint is not None else None
    given = opts.given()
    if layout is None and known is None and not given:
        return None, []
    if layout is None and known is None and len(given) < 3:
        need = sorted({"--lora-r", "--lora-heads", "--lora-alpha"} - set(given))
        raise ValueError(f"{', '.join(given)} without --adapter: also pass {', '.join(need)} (no file to read them from)")

    def pick(option, from_config, from_file, name):
        for value, where in ((option, f"--lora-{name}"), (from_config, src.path), (from_file, "the adapter's shapes")):
            if value is not None:
                return value, where
        return None, None

    r, r_from = pick(opts.r, known and known.r, layout and layout.r, "r")
    heads, heads_from = pick(opts.heads, known and known.num_heads, layout and layout.heads, "heads")
    alpha, alpha_from = pick(opts.alpha, known and known.alpha, None, "alpha")
    if alpha is None:
        raise ValueError("the I-LoRA alpha is in no file (the scaling is alpha / r): pass --lora-alpha "
                         "(the Crab+ release trains with 256)")
    dropout = opts.dropout if opts.dropout is not None else (known.dropout if known else DEFAULT_LORA_DROPOUT)
    lora = ILoRAConfig(r=int(r), alpha=float(alpha), num_heads=int(heads), dropout=float(dropout),
                       **({"targets": known.targets} if known else {}))
    if layout is not None:
        problems = layout_problems(layout, lora, r_from=r_from, heads_from=heads_from)
        if problems:
            raise MappingError(f"{adapter}: an adapter for another I-LoRA:\n  " + "\n  ".join(problems))
    return lora, [f"I-LoRA: r {lora.r} ({r_from}), {lora.num_heads} heads ({heads_from}), alpha {lora.alpha:g} "
                  f"({alpha_from}), dropout {lora.dropout:g}"]


def with_param_dtype(cfg: CrabPlusConfig, dtype: np.dtype | None) -> CrabPlusConfig:
    """``cfg`` with every tower's ``param_dtype`` set to ``dtype`` (None: unchanged)."""
    return cfg if dtype is None else replace_towers(cfg, param_dtype=dtype)


def convert(hf: str | None, adapter: str | None, *, config: str | None = None, lora: LoraOptions = LoraOptions(),
            dtype: np.dtype | None = None) -> Converted:
    """The files -> flat crab_jax arrays + config JSON (raises MappingError naming every bad key)."""
    if hf is None and adapter is None:
        raise ValueError("to-jax needs --hf DIR and / or --adapter FILE")
    hf_ckpt = open_hf_checkpoint(hf) if hf is not None else None
    adapter_tensors = open_tensors(adapter) if adapter is not None else None
    src = config_source(config, hf_ckpt, adapter)
    layout = None
    if adapter_tensors is not None:
        layout = adapter_layout({k: adapter_tensors.shape(k) for k in adapter_tensors}, source=adapter)
    ilora, notes = resolve_lora(src, lora, layout, adapter)
    if src.checkpoint is not None:
        cfg = dataclasses.replace(src.checkpoint.thinker, lora=ilora)
    elif src.hf_config is not None:
        cfg = thinker_config_from_hf(src.hf_config, lora=ilora, source=src.path)
    else:
        raise ValueError(f"{src.path}: no model config in it")
    cfg = canonical_config(with_param_dtype(cfg, dtype))
    notes.insert(0, f"model config from {src.path}")
    contents = tuple(p for p, f in (("base", hf), ("adapter", adapter)) if f is not None)

    table = thinker_table(cfg)
    problems: dict[str, list[str]] = {}
    if hf_ckpt is not None:
        base = {k: s for k, (s, _) in expected_variables(cfg, ["base"]).items()}
        wanted = {k: shape for k, (_, shape) in torch_layout(table, base).items()}
        absent = {k for keys in hf_ckpt.absent_shards.values() for k in keys}
        found = {k: hf_ckpt.tensors.shape(k) for k in hf_ckpt.tensors}
        problems[hf] = (absent_shard_problems(hf_ckpt, wanted)
                        + torch_shape_problems(table, base, found, absent=absent))
    if adapter_tensors is not None:
        found = {k: adapter_tensors.shape(k) for k in adapter_tensors}
        problems[adapter] = torch_shape_problems(table, {k: s for k, (s, _) in
                                                         expected_variables(cfg, ["adapter"]).items()}, found)
    raise_problems(problems)

    sources = [s for s in (hf_ckpt and hf_ckpt.tensors, adapter_tensors) if s is not None]
    expected = expected_variables(cfg, contents)
    flat = table.to_jax(SourceView(sources, dtype), expected, source=" + ".join(f for f in (hf, adapter) if f))
    hf_config = src.hf_config if hf_ckpt is None else hf_ckpt.config
    out_json = config_io.config_to_json(config_io.CheckpointConfig(cfg, contents, hf_config))
    return Converted(flat, out_json, list(contents), notes, skipped_notes(hf_ckpt) if hf_ckpt else {})


def lora_options(args: argparse.Namespace) -> LoraOptions:
    return LoraOptions(r=args.lora_r, heads=args.lora_heads, alpha=args.lora_alpha, dropout=args.lora_dropout)


def to_jax(args: argparse.Namespace, dtype: np.dtype | None) -> Converted:
    """The parsed ``to-jax`` options (:func:`.arguments.add_to_jax_arguments`) -> the converted checkpoint."""
    return convert(args.hf, args.adapter, config=args.config, lora=lora_options(args), dtype=dtype)
