"""Builds a :class:`CrabConfig` from the original's configs plus a state dict's shapes.

Sizes that the released files disagree on (number of I-LoRA heads, segmentation queries,
Q-Former layers and queries, vocabulary after the added tokens) are read from the tensors'
shapes, never from a constant.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig
from crab_jax.families.crab.model import CrabConfig
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qformer import QFormerConfig
from crab_jax.models.seg import SegConfig
from crab_jax.families.crab.convert.crab_table import CRAB_PREFIX, PEFT_PREFIX


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise KeyError(f"state dict has no {key!r}, needed to size the model")
    return tuple(shapes[key])


def _count(shapes, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes for m in [rx.match(k)] if m})


def crab_config_from_original(
    shapes: Mapping[str, Sequence[int]],
    *,
    llama_config: Mapping[str, Any],
    clip_config: Mapping[str, Any],
    beats_cfg: Mapping[str, Any],
    bert_config: Mapping[str, Any],
    select_layer_list: Sequence[int],
    select_feature: str,
    special_token_ids: Mapping[str, int],
    pad_token_id: int,
    lora: Mapping[str, Any] | None,
    seg: Mapping[str, Any] | None,
    llama_options: Mapping[str, Any] | None = None,
) -> CrabConfig:
    """``shapes``: torch key -> shape of a Crab state dict (``base_model.model.`` names)."""
    vocab, hidden = _shape(shapes, CRAB_PREFIX + "embed_tokens.weight")
    llama = LlamaConfig.from_hf(dict(llama_config, vocab_size=vocab), **(llama_options or {}))
    if llama.hidden_size != hidden:
        raise ValueError(f"LLaMA config hidden_size {llama.hidden_size} != embed_tokens width {hidden}")
    vision = ClipVisionConfig.from_hf(clip_config)
    beats = BeatsConfig.from_checkpoint_cfg(beats_cfg)

    def projector(module: str, prefix: str, encoder_width: int) -> QFormerConfig:
        _, queries, _ = _shape(shapes, f"{CRAB_PREFIX}{module}.{prefix}_query_tokens")
        layers = _count(shapes, rf"{re.escape(CRAB_PREFIX)}\w+\.{prefix}_Qformer\.bert\.encoder\.layer\.(\d+)\.")
        depth = _count(shapes, rf"{re.escape(CRAB_PREFIX)}\w+\.{prefix}_proj\.(\d+)\.weight")
        return QFormerConfig.from_bert_config(bert_config, num_hidden_layers=layers, encoder_width=encoder_width,
                                              num_query_tokens=queries, d_model=hidden, mlp_depth=depth)

    visual_qformer = projector("vl_projector", "visual", vision.hidden_size)
    audio_qformer = projector("al_projector", "audio", beats.encoder_embed_dim)

    lora_cfg = None
    if lora is not None:
        heads = _count(shapes, r".*\.lora_B(\d+)\.weight$")
        a_key = next((k for k in shapes if k.endswith("lora_A.weight")), None)
        if heads == 0 or a_key is None:
            raise ValueError("an I-LoRA config was given but the state dict has no lora_A / lora_B{h} keys")
        lora_cfg = ILoRAConfig(r=_shape(shapes, a_key)[0], alpha=lora["lora_alpha"], num_heads=heads,
                               dropout=lora.get("lora_dropout", 0.0),
                               targets=tuple(lora.get("target_modules", ILoRAConfig().targets)))

    seg_cfg = None
    if seg is not None:
        queries, _ = _shape(shapes, CRAB_PREFIX + "seg_module.mask_decoder.avs_query_tokens.weight")
        seg_cfg = SegConfig.from_dict(dict(seg, d_model=hidden, vit_dim=vision.hidden_size, avs_query_num=queries))

    return CrabConfig(
        llama=llama,
        clip=ClipEncoderConfig(vision, select_layer_list=tuple(select_layer_list), select_feature=select_feature),
        beats=beats, visual_qformer=visual_qformer, audio_qformer=audio_qformer,
        lora=lora_cfg, seg=seg_cfg, special_token_ids=dict(special_token_ids), pad_token_id=pad_token_id,
    )


__all__ = ["crab_config_from_original", "PEFT_PREFIX"]
