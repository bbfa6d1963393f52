"""Mapping rows of Crab's Q-Former projectors (``VLProjector`` / ``ALProjector``).

crab_jax mirrors the torch names, so every row is ``torch key -> same path`` with a
``LINEAR`` transpose for ``nn.Linear`` weights. Two special cases:

* The masked-LM decoder is tied in torch: ``cls.predictions.decoder.weight`` IS
  ``bert.embeddings.word_embeddings.weight`` and ``cls.predictions.decoder.bias`` IS
  ``cls.predictions.bias``. Checkpoints hold both names (the fixtures and ``state_dict()``
  do), so each pair maps to ONE crab_jax parameter and is written back under both names.
  The engine's ``tied`` placeholders match a single path segment, and these aliases differ
  in several segments (``bert.embeddings.word_embeddings`` vs ``cls.predictions.decoder``),
  so :class:`AliasRule` lets a tied placeholder take dotted values; everything else (the
  equal-tensor check, ``tied_names='first'``) is the engine's.
* ``bert.embeddings.position_ids`` is an int64 torch buffer; JAX keeps int32 (no x64), so
  the reverse transform casts back to int64.

Layer counts are never assumed: ``bert.encoder.layer.{layer}`` rows match any index, and a
layer without cross-attention simply has no ``crossattention.*`` keys.
"""

from __future__ import annotations

import numpy as np

from crab_jax.checkpoints.convert.mapping import (
    IDENTITY, LINEAR, MappingTable, Rule, Transform, linear_rules, norm_rules, tied)

# torch int64 index buffer <-> crab_jax int32 buffer (values are small positions)
INDEX_INT64 = Transform("index_int64", lambda x: x, lambda x: np.asarray(x).astype(np.int64))


def qformer_rules() -> list[Rule]:
    """Rows of one Q-Former (torch ``BertLMHeadModel``), keys relative to it."""
    layer = "bert.encoder.layer.{layer}"
    rules = [
        # tied pairs first: one crab_jax parameter, two torch names each
        Rule("{owner}.weight", "bert.embeddings.word_embeddings.weight", IDENTITY,
                  tied=(tied("owner", ["bert.embeddings.word_embeddings", "cls.predictions.decoder"]),)),
        Rule("{owner}.bias", "cls.predictions.bias", IDENTITY,
                  tied=(tied("owner", ["cls.predictions", "cls.predictions.decoder"]),)),
        Rule("bert.embeddings.position_embeddings.weight", "bert.embeddings.position_embeddings.weight"),
        Rule("bert.embeddings.position_ids", "bert.embeddings.position_ids", INDEX_INT64),
        *norm_rules("bert.embeddings.LayerNorm"),
    ]
    for block in ("attention", "crossattention"):
        for proj in ("query", "key", "value"):
            rules += linear_rules(f"{layer}.{block}.self.{proj}")
        rules += linear_rules(f"{layer}.{block}.output.dense")
        rules += norm_rules(f"{layer}.{block}.output.LayerNorm")
    for ffn_in, ffn_out in (("intermediate", "output"), ("intermediate_query", "output_query")):
        rules += linear_rules(f"{layer}.{ffn_in}.dense")
        rules += linear_rules(f"{layer}.{ffn_out}.dense")
        rules += norm_rules(f"{layer}.{ffn_out}.LayerNorm")
    rules += linear_rules("cls.predictions.transform.dense")
    rules += norm_rules("cls.predictions.transform.LayerNorm")
    return rules


def projector_rules(prefix: str) -> list[Rule]:
    """Rows of one projector; ``prefix`` is ``'visual'`` or ``'audio'`` (torch attribute names)."""
    rules = [
        Rule(f"{prefix}_query_tokens", f"{prefix}_query_tokens"),
        *norm_rules(f"{prefix}_ln"),
        # nn.Sequential indices of the Linear layers (0, 2, 4 ...); odd slots are GELUs
        Rule(f"{prefix}_proj.{{index}}.weight", f"{prefix}_proj.{{index}}.weight", LINEAR),
        Rule(f"{prefix}_proj.{{index}}.bias", f"{prefix}_proj.{{index}}.bias", IDENTITY),
    ]
    q = f"{prefix}_Qformer."
    return rules + [r.with_prefix(q, q) for r in qformer_rules()]


def vl_projector_table() -> MappingTable:
    """Crab ``VLProjector`` keys (relative to the projector, e.g. ``visual_Qformer.bert...``)."""
    return MappingTable("vl_projector", projector_rules("visual"))


def al_projector_table() -> MappingTable:
    """Crab ``ALProjector`` keys (relative to the projector, e.g. ``audio_Qformer.bert...``)."""
    return MappingTable("al_projector", projector_rules("audio"))
