"""Crab+'s ONE mapping table: the thinker's torch names <-> crab_jax paths, both files, both ways.

The JAX paths are the thinker's torch module paths (``CrabPlusThinker``: ``model``, ``lm_head``,
``visual``, ``audio_tower``). The torch side names them as the two files the original reads::

    thinker. + path                    the HF Qwen2.5-Omni checkpoint (base weights: ``weight``,
                                       ``bias``, norms, embeddings, convs)
    base_model.model. + path           finetune_weights.bin (the I-LoRA weights: ``lora_A.weight``,
                                       ``lora_B{h}.weight``, ``lora_route.weight``)

e.g. ``thinker.model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3.mlp.up_proj.weight``
(transposed) and ``base_model.model.model.layers.3.mlp.up_proj.lora_B1.weight`` -> head 1 of
``model.layers.3.mlp.up_proj.lora_B``. The rows come from the component tables: the text
model from the shared LLaMA / Qwen2 table, the towers from :mod:`.vision_table` /
:mod:`.audio_table`; this module only puts each row under the prefix of the file it lives in.
The HF checkpoint's ``talker.*`` / ``token2wav.*`` (speech output) are no part of the thinker:
:func:`skipped_reason` names them, everything else must match a row.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import numpy as np

from crab_jax.checkpoints.convert.mapping import MappingError, MappingTable, Rule
from crab_jax.checkpoints.convert.tables.ilora import ADAPTER_LEAVES, is_adapter_rule
from crab_jax.checkpoints.convert.tables.llama import llama_table
from crab_jax.families.crab_plus.convert.audio_table import audio_rules
from crab_jax.families.crab_plus.convert.vision_table import vision_rules
from crab_jax.families.crab_plus.model import CrabPlusConfig

HF_PREFIX = "thinker."  # the HF checkpoint's thinker (``base_model_prefix``)
PEFT_PREFIX = "base_model.model."  # the PEFT wrapper of finetune_weights.bin
# HF checkpoint prefixes that are not the thinker: skipped by name, never loaded.
SKIPPED = {"talker.": "the talker (speech output), not part of the thinker",
           "token2wav.": "token2wav (speech synthesis), not part of the thinker"}
# The three towers by their first path component (for messages and ``inspect``).
TOWERS = {"model": "text", "lm_head": "text", "visual": "vision", "audio_tower": "audio"}


def skipped_reason(key: str) -> str | None:
    """Why an HF checkpoint key is skipped (``talker.*`` / ``token2wav.*``), or None."""
    for prefix, why in SKIPPED.items():
        if key.startswith(prefix):
            return why
    return None


def thinker_rules(cfg: CrabPlusConfig, lora: bool) -> list[Rule]:
    """The rows of ``CrabPlusThinker(cfg)`` (with I-LoRA iff ``lora``), torch keys relative to the
    thinker (no file prefix)."""
    targets = cfg.lora.targets if cfg.lora is not None else ()
    text = llama_table(cfg.text, lora, **({"targets": targets} if lora else {})).rules
    return [*text, *vision_rules(cfg.vision, lora), *audio_rules(cfg.audio, lora)]


def thinker_table(cfg: CrabPlusConfig, lora: bool | None = None) -> MappingTable:
    """The family's table: base rows under ``thinker.``, adapter rows under ``base_model.model.``.

    ``lora``: whether the model has I-LoRA (default: ``cfg.lora is not None``).
    """
    lora = cfg.lora is not None if lora is None else lora
    rows = [r.with_prefix(PEFT_PREFIX if is_adapter_rule(r) else HF_PREFIX, "") for r in thinker_rules(cfg, lora)]
    return MappingTable("crab_plus" + ("_ilora" if lora else ""), rows)


def is_adapter_path(jax_path: str) -> bool:
    """Whether a crab_jax path is one of the I-LoRA weights (``finetune_weights.bin``'s part)."""
    return jax_path.rsplit(".", 1)[-1] in ADAPTER_LEAVES


def _shape_only(shape) -> np.ndarray:
    """An array of ``shape`` whose items take no bytes: a transform applied to it gives the
    torch shape without allocating (the real model's embedding would be 2 GiB)."""
    return np.empty(tuple(shape), np.dtype([]))


def torch_layout(table: MappingTable, jax_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[str, tuple]]:
    """torch key -> ``(crab_jax path, torch shape)`` of every torch tensor the JAX leaves
    (path -> shape) are written to, in the leaves' order. Reads no data."""
    out: dict[str, tuple[str, tuple]] = {}
    for path, shape in jax_shapes.items():
        rule = table.rule_for_jax(path)
        inner = tuple(rule.transform.to_torch(_shape_only(tuple(shape)[len(rule.stack):])).shape)
        for key, _ in table.jax_key_to_torch(path, shape):
            out[key] = (path, inner)
    return out


def torch_shape_problems(table: MappingTable, expected: Mapping[str, tuple[int, ...]],
                         found: Mapping[str, tuple[int, ...]], *, absent: Collection[str] = ()) -> list[str]:
    """How ``found`` (torch key -> shape, e.g. a file's header) differs from the torch tensors of
    ``expected`` (crab_jax path -> shape): one line per missing, unexpected or mis-shaped key,
    with both shapes. Reads no tensor data. Keys in ``absent`` are reported elsewhere (a missing shard).
    """
    want = torch_layout(table, expected)
    problems = []
    for key, (path, shape) in want.items():
        if key in absent:
            continue
        if key not in found:
            problems.append(f"missing tensor {key!r}: the model expects shape {shape} (crab_jax {path!r})")
        elif tuple(found[key]) != shape:
            problems.append(f"wrong shape for {key!r}: the file has {tuple(found[key])}, the model expects {shape} "
                            f"(crab_jax {path!r})")
    for key in found:
        if key in want:
            continue
        hit = table.torch_key_to_jax(key)
        why = (f"no row of the {table.family} table matches it" if hit is None
               else f"the model has no crab_jax {hit[1]!r} here")
        problems.append(f"unexpected tensor {key!r} {tuple(found[key])}: {why}")
    return problems


def raise_problems(problems: Mapping[str, Sequence[str]]) -> None:
    """Raises one :class:`MappingError` listing every problem, grouped by source (no-op if none)."""
    total = sum(len(p) for p in problems.values())
    if not total:
        return
    parts = [f"{source} ({len(lines)} problem(s)):\n  " + "\n  ".join(lines)
             for source, lines in problems.items() if lines]
    raise MappingError(f"the files do not hold exactly the thinker's weights ({total} problem(s)):\n"
                       + "\n".join(parts))
