"""The model config of Crab's user files: sizes read from the tensors' shapes, plus what no
weight file says (the original's HF / BEATs / BERT configs, the command line's options).

Sizes that the released files disagree on (number of I-LoRA heads, segmentation queries,
Q-Former layers and queries, vocabulary after the added tokens) are read from the tensors'
shapes, never from a constant. ``shapes`` is always ``torch key -> shape`` under Crab's full
names (``base_model.model.``…). One ``*_section`` function sizes each config section; a whole
Crab (:func:`crab_config_from_original`) takes the widths that connect the components from
the neighbouring sections, a subset (:func:`component_sections`) reads them from its own tensors.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from crab_jax.families.crab.convert.crab_table import CRAB_PREFIX, PROJECTORS
from crab_jax.families.crab.model import CrabConfig
from crab_jax.families.crab.tokens import NUM_ADDED_TOKENS, NUM_MASK_TOKENS, special_token_ids
from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig, normalize_select_layers
from crab_jax.models.ilora import DEFAULT_TARGETS, ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qformer import QFormerConfig
from crab_jax.models.seg.config import SegConfig

Shapes = Mapping[str, Sequence[int]]
SEG = CRAB_PREFIX + "seg_module."


@dataclasses.dataclass
class ConfigOptions:
    """What no weight file says, from the command line (defaults: the released Crab)."""

    bert_config: dict | None = None
    select_layer_list: tuple[int, ...] = (14, 22, 23)
    select_feature: str = "patch"
    pad_token_id: int = 2
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    special_token_ids: dict | None = None
    seg: dict | None = None  # SegConfig fields overriding the ones read from shapes
    llama_config: dict | None = None
    clip_config: dict | None = None
    beats_cfg: dict | None = None


def _need(shapes: Shapes, key: str, why: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"cannot size {why}: no tensor {key!r} in the sources")
    return tuple(shapes[key])


def _count(shapes: Shapes, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes for m in [rx.match(k)] if m})


# -- one config section each ----------------------------------------------------------------

def llama_section(shapes: Shapes, hf_config: Mapping[str, Any], llama_options: Mapping[str, Any] | None = None
                  ) -> LlamaConfig:
    """The HF config with the vocabulary of ``embed_tokens`` (resized by the added tokens)."""
    vocab, hidden = _need(shapes, CRAB_PREFIX + "embed_tokens.weight", "the LLM")
    llama = LlamaConfig.from_hf(dict(hf_config, vocab_size=vocab), **(llama_options or {}))
    if llama.hidden_size != hidden:
        raise ValueError(f"LLaMA config hidden_size {llama.hidden_size} != embed_tokens width {hidden}")
    return llama


def lora_options(shapes: Shapes, opts: ConfigOptions) -> dict | None:
    """The original's LoRA dict (alpha / dropout from the options; targets from the keys)."""
    targets = sorted({m.group(1) for k in shapes for m in [re.match(r".*\.(\w+)\.lora_A\.weight$", k)] if m})
    if not targets:
        return None
    return {"lora_alpha": opts.lora_alpha, "lora_dropout": opts.lora_dropout,
            "target_modules": [t for t in DEFAULT_TARGETS if t in targets] + [t for t in targets if t not in DEFAULT_TARGETS]}


def lora_section(shapes: Shapes, lora: Mapping[str, Any] | None) -> ILoRAConfig | None:
    """``lora`` (the original's LoRA dict) with the rank and head count of the tensors."""
    if lora is None:
        return None
    heads = _count(shapes, r".*\.lora_B(\d+)\.weight$")
    a_key = next((k for k in shapes if k.endswith("lora_A.weight")), None)
    if heads == 0 or a_key is None:
        raise ValueError("an I-LoRA config was given but the state dict has no lora_A / lora_B{h} keys")
    return ILoRAConfig(r=tuple(shapes[a_key])[0], alpha=lora["lora_alpha"], num_heads=heads,
                       dropout=lora.get("lora_dropout", 0.0),
                       targets=tuple(lora.get("target_modules", ILoRAConfig().targets)))


def qformer_section(shapes: Shapes, module: str, prefix: str, bert: Mapping[str, Any] | None, *,
                    encoder_width: int, d_model: int) -> QFormerConfig:
    """The Q-Former of ``module`` (``vl_projector`` / ``al_projector``; attributes ``{prefix}_*``)."""
    if bert is None:
        raise ValueError(f"sizing {module} needs --bert-config (the Q-Former's BERT config.json)")
    p = f"{CRAB_PREFIX}{module}."
    return QFormerConfig.from_bert_config(
        bert, num_hidden_layers=_count(shapes, rf"{re.escape(p)}{prefix}_Qformer\.bert\.encoder\.layer\.(\d+)\."),
        encoder_width=encoder_width, num_query_tokens=_need(shapes, f"{p}{prefix}_query_tokens", module)[1],
        d_model=d_model, mlp_depth=_count(shapes, rf"{re.escape(p)}{prefix}_proj\.(\d+)\.weight"))


def seg_options(shapes: Shapes, opts: ConfigOptions) -> dict:
    """SegConfig fields read from the seg module's tensor shapes (+ ``opts.seg`` overrides)."""
    seg = {
        "prompt_embed_dim": _need(shapes, SEG + "no_mask_embed.weight", "the seg module")[1],
        "depth": _count(shapes, re.escape(SEG) + r"mask_decoder\.transformer\.0\.layers\.(\d+)\."),
        "qg_layers": _count(shapes, re.escape(SEG) + r"mask_decoder\.query_generator\.layers\.(\d+)\."),
        "image_scale_nums": _need(shapes, SEG + "mask_decoder.level_embed.weight", "the seg module")[0],
        "avss_classes": _need(shapes, SEG + "mask_decoder.avss_classifier.weight", "the seg module")[0],
        "binary_classes": _need(shapes, SEG + "mask_decoder.ms3_s4_classfier.weight", "the seg module")[0],
    }
    ffn = SEG + "mask_decoder.query_generator.layers.0.ffn.0.weight"
    if ffn in shapes:
        seg["query_generator_ffn"] = shapes[ffn][0]
    mlp = SEG + "mask_decoder.transformer.0.layers.0.mlp.lin1.weight"
    if mlp in shapes:
        seg["two_way_mlp_dim"] = shapes[mlp][0]
    seg.update(opts.seg or {})
    return seg


def seg_section(shapes: Shapes, seg: Mapping[str, Any], *, d_model: int, vit_dim: int) -> SegConfig:
    queries = _need(shapes, SEG + "mask_decoder.avs_query_tokens.weight", "the seg module")[0]
    return SegConfig.from_dict(dict(seg, d_model=d_model, vit_dim=vit_dim, avs_query_num=queries))


def default_special_tokens(vocab: int, base_vocab: int | None) -> dict[str, int]:
    """Crab's added tokens after the base vocabulary (inferred as ``vocab - 17`` if not known)."""
    added = NUM_ADDED_TOKENS
    base = vocab - added if base_vocab is None or base_vocab == vocab else base_vocab
    if base + added != vocab:
        raise ValueError(f"embed_tokens has {vocab} rows but the base vocabulary {base} + {added} added tokens "
                         f"= {base + added}; pass --special-tokens")
    return special_token_ids(base, NUM_MASK_TOKENS)


# -- a whole Crab, or some of its components ----------------------------------------------------

def crab_config_from_original(
    shapes: Shapes,
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
    llama = llama_section(shapes, llama_config, llama_options)
    clip = ClipEncoderConfig(ClipVisionConfig.from_hf(clip_config), select_layer_list=tuple(select_layer_list),
                             select_feature=select_feature)
    beats = BeatsConfig.from_checkpoint_cfg(beats_cfg)
    return CrabConfig(
        llama=llama, clip=clip, beats=beats,
        visual_qformer=qformer_section(shapes, "vl_projector", "visual", bert_config,
                                       encoder_width=clip.vision.hidden_size, d_model=llama.hidden_size),
        audio_qformer=qformer_section(shapes, "al_projector", "audio", bert_config,
                                      encoder_width=beats.encoder_embed_dim, d_model=llama.hidden_size),
        lora=lora_section(shapes, lora),
        seg=None if seg is None else seg_section(shapes, seg, d_model=llama.hidden_size,
                                                 vit_dim=clip.vision.hidden_size),
        special_token_ids=dict(special_token_ids), pad_token_id=pad_token_id,
    )


def whole_crab_config(shapes: Shapes, source_configs: Mapping[str, dict], opts: ConfigOptions) -> CrabConfig:
    """The CrabConfig of sources holding every component. ``source_configs``: component -> the
    config a source file carried (HF config.json, BEATs cfg); ``opts`` win over them."""
    llama = opts.llama_config or source_configs.get("llm")
    clip = opts.clip_config or source_configs.get("visual_encoder")
    beats = opts.beats_cfg or source_configs.get("audio_encoder")
    missing = [n for n, v in (("a LLaMA config.json (--llama DIR)", llama), ("a CLIP config.json (--clip DIR)", clip),
                              ("a BEATs cfg (--beats FILE.pt)", beats), ("--bert-config", opts.bert_config)) if v is None]
    if missing:
        raise ValueError(f"sizing a whole Crab needs {', '.join(missing)}")
    vocab = _need(shapes, CRAB_PREFIX + "embed_tokens.weight", "the LLM")[0]
    tokens = opts.special_token_ids or default_special_tokens(vocab, llama.get("vocab_size"))
    seg = seg_options(shapes, opts) if any(k.startswith(SEG) for k in shapes) else None
    return crab_config_from_original(
        shapes, llama_config=llama, clip_config=clip, beats_cfg=beats, bert_config=opts.bert_config,
        select_layer_list=opts.select_layer_list, select_feature=opts.select_feature, special_token_ids=tokens,
        pad_token_id=opts.pad_token_id, lora=lora_options(shapes, opts), seg=seg)


def component_sections(shapes: Shapes, source_configs: Mapping[str, dict], components: Sequence[str],
                       opts: ConfigOptions) -> dict[str, Any]:
    """Config sections of a subset of components, each sized from its own tensors."""
    out: dict[str, Any] = {}
    if "llm" in components:
        hf = opts.llama_config or source_configs.get("llm")
        if hf is None:
            raise ValueError("sizing the LLM needs a LLaMA config.json (--llama DIR or --llama-config)")
        out["llama"] = llama_section(shapes, hf)
        out["lora"] = lora_section(shapes, lora_options(shapes, opts))
    if "visual_encoder" in components:
        hf = opts.clip_config or source_configs.get("visual_encoder")
        if hf is None:
            raise ValueError("sizing the CLIP tower needs its config.json (--clip DIR or --clip-config)")
        vision = ClipVisionConfig.from_hf(hf)
        layers = tuple(opts.select_layer_list)
        try:  # negatives count from the last hidden state (HF hidden_states indexing)
            normalize_select_layers(layers, vision.num_hidden_layers)
        except ValueError as e:
            raise ValueError(f"--select-layers {list(layers)}: {e}") from None
        out["clip"] = ClipEncoderConfig(vision, select_layer_list=layers, select_feature=opts.select_feature)
    if "audio_encoder" in components:
        cfg = opts.beats_cfg or source_configs.get("audio_encoder")
        if cfg is None:
            raise ValueError("sizing BEATs needs the cfg of a BEATs .pt (--beats FILE.pt)")
        out["beats"] = BeatsConfig.from_checkpoint_cfg(cfg)
    for module, prefix, section in PROJECTORS:
        if module in components:
            p = f"{CRAB_PREFIX}{module}.{prefix}_"
            cross = _need(shapes, f"{p}Qformer.bert.encoder.layer.0.crossattention.self.key.weight", module)
            out[section] = qformer_section(shapes, module, prefix, opts.bert_config, encoder_width=cross[1],
                                           d_model=_need(shapes, f"{p}proj.0.weight", module)[0])
    if "seg_module" in components:
        out["seg"] = seg_section(shapes, seg_options(shapes, opts),
                                 d_model=_need(shapes, SEG + "text_hidden_fcs.0.0.weight", "the seg module")[1],
                                 vit_dim=_need(shapes, SEG + "image_feature_neck.0.weight", "the seg module")[1])
    return out
