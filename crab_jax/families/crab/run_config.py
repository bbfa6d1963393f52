"""The :class:`CrabConfig` a run trains, from the run config's ``model`` section."""

from __future__ import annotations

import dataclasses

from crab_jax.families.crab import config_io
from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig
from crab_jax.families.crab.model import CrabConfig
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.families.crab.presets import tiny_crab_config
from crab_jax.families.crab.tokens import LLAMA_VOCAB, PAD_TOKEN_ID, special_token_ids
from crab_jax.models.qformer import QFormerConfig
from crab_jax.models.seg import SegConfig

PRESETS = ("tiny", "crab_7b", "checkpoint")


def paper_crab_config() -> CrabConfig:
    """Crab as released: LLaMA-2-7B-chat (+17 tokens), CLIP ViT-L/14 taps (14, 22, 23), BEATs iter3+,
    2-layer BERT-base Q-Formers with 32 queries, I-LoRA k=3 r=8, the F2 seg module."""
    tokens = special_token_ids(LLAMA_VOCAB)
    llama = LlamaConfig(vocab_size=LLAMA_VOCAB + len(tokens), hidden_size=4096, intermediate_size=11008,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                        rms_norm_eps=1e-5, max_position_embeddings=4096)
    vision = ClipVisionConfig()  # ViT-L/14 at 224 px
    beats = BeatsConfig(embed_dim=512, encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                        encoder_attention_heads=12, deep_norm=True, relative_position_embedding=True,
                        num_buckets=320, max_distance=800, gru_rel_pos=True, dropout=0.0, attention_dropout=0.0,
                        finetuned_model=False)
    bert = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=30522,
                max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu")

    def qformer(width):
        return QFormerConfig.from_bert_config(bert, num_hidden_layers=2, encoder_width=width, num_query_tokens=32,
                                              d_model=llama.hidden_size, tokens_per_frame=vision.grid_size ** 2)

    return CrabConfig(llama=llama, clip=ClipEncoderConfig(vision, select_layer_list=(14, 22, 23)), beats=beats,
                      visual_qformer=qformer(vision.hidden_size), audio_qformer=qformer(beats.encoder_embed_dim),
                      lora=ILoRAConfig(r=8, alpha=16.0, num_heads=3, dropout=0.05),
                      seg=SegConfig(), special_token_ids=tokens, pad_token_id=PAD_TOKEN_ID)


def load_checkpoint_crab_config(ckpt_dir: str) -> CrabConfig:
    """``<ckpt_dir>/crab_config.json`` (local or ``gs://``) -> the whole CrabConfig it describes."""
    if not ckpt_dir:
        raise ValueError("config model.preset='checkpoint' needs model.init_checkpoint=<converted dir>")
    return config_io.load_crab_config(ckpt_dir)


def crab_config_from(model_cfg) -> CrabConfig:
    """The preset's CrabConfig with the run config's ``model`` options (:func:`apply_run_options`)."""
    preset = model_cfg.preset
    if preset == "tiny":
        cfg = tiny_crab_config(lora_heads=model_cfg.lora.num_heads)
    elif preset == "crab_7b":
        cfg = paper_crab_config()
    elif preset == "checkpoint":
        cfg = load_checkpoint_crab_config(model_cfg.init_checkpoint)
    else:
        raise ValueError(f"config model.preset={preset!r}; known: {PRESETS}")
    return apply_run_options(cfg, model_cfg)


def apply_run_options(cfg: CrabConfig, model_cfg) -> CrabConfig:
    """``cfg`` (a preset's sizes) with the run's dtypes, scan, remat, vocab padding, LoRA and seg sizes."""
    llama = dataclasses.replace(cfg.llama, scan_layers=bool(model_cfg.scan_layers), remat=model_cfg.remat,
                                vocab_pad_multiple=int(model_cfg.vocab_pad_multiple),
                                param_dtype=model_cfg.param_dtype)
    lora = ILoRAConfig(r=int(model_cfg.lora.r), alpha=float(model_cfg.lora.alpha),
                       num_heads=int(model_cfg.lora.num_heads), dropout=float(model_cfg.lora.dropout),
                       targets=tuple(model_cfg.lora.targets))
    # The seg module is always built (checkpoints hold it); ``model.seg_branch`` only decides
    # whether the train step runs it (Crab.__call__(with_seg=...)).
    seg = cfg.seg
    if seg is not None:
        changes = {k: int(getattr(model_cfg, k)) for k in ("avs_query_num", "low_res_mask_size")
                   if int(getattr(model_cfg, k)) > 0}
        seg = dataclasses.replace(seg, **changes)
    return dataclasses.replace(cfg, llama=llama, lora=lora, seg=seg, dtype=model_cfg.dtype)
