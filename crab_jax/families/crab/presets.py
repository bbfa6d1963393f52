"""Crab's model configurations: the code-built presets and the run options that resize them.

* :func:`tiny_crab_config`: every component with widths of a few dozen (tests, the CPU demo);
* :func:`paper_crab_config`: Crab as released (LLaMA-2-7B-chat, CLIP ViT-L/14, BEATs, ...);
* ``checkpoint``: the ``crab_config.json`` next to a converted checkpoint;

and :func:`model_config`, the family hook that turns the run config's ``model`` section
(typed, :class:`crab_jax.config.sections.ModelConfig`) into the :class:`CrabConfig` to build.
"""

from __future__ import annotations

import dataclasses

from crab_jax.config.sections import DataConfig, ModelConfig
from crab_jax.families.crab import config_io
from crab_jax.families.crab.media_slots import RUN_MODES, task_needs
from crab_jax.families.crab.model import CrabConfig
from crab_jax.families.crab.tokens import LLAMA_VOCAB, PAD_TOKEN_ID, special_token_ids
from crab_jax.models.beats import BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisionConfig
from crab_jax.models.attention import resolve_attention
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qformer import QFormerConfig
from crab_jax.models.seg.config import SegConfig

PRESETS = ("tiny", "crab_7b", "checkpoint")
# Crab's modules per kind of media (which media a task's prompts show: media_slots.SLOT_NEEDS).
VISUAL_MODULES = ("visual_encoder", "vl_projector")
AUDIO_MODULES = ("audio_encoder", "al_projector")
SEG_MODULE = "seg_module"


def tiny_crab_config(*, base_vocab: int = 64, hidden: int = 32, image_size: int = 56, patch: int = 14,
                     lora_heads: int = 3, seg_queries: int = 16) -> CrabConfig:
    """A Crab small enough for CPU tests: every component present, widths of a few dozen."""
    tokens = special_token_ids(base_vocab)
    vision = ClipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                              patch_size=patch, image_size=image_size)
    beats = BeatsConfig(embed_dim=16, encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=32,
                        encoder_attention_heads=2, conv_pos=4, conv_pos_groups=2, deep_norm=True,
                        relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True,
                        dropout=0.0, attention_dropout=0.0, finetuned_model=False)
    # Every dropout off, as in the other tiny components (a 2-query, 16-wide Q-Former learns the
    # demo's media cues far slower with BERT's 0.1).
    bert = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=8,
                max_position_embeddings=8, layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    grid = (image_size // patch) ** 2

    def qformer(width):
        return QFormerConfig.from_bert_config(bert, num_hidden_layers=1, encoder_width=width, num_query_tokens=2,
                                              d_model=hidden, tokens_per_frame=grid)

    return CrabConfig(
        llama=LlamaConfig(vocab_size=len(tokens) + base_vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5),
        clip=ClipEncoderConfig(vision, select_layer_list=(1, 2, 3)),
        beats=beats,
        visual_qformer=qformer(vision.hidden_size),
        audio_qformer=qformer(beats.encoder_embed_dim),
        lora=ILoRAConfig(r=4, alpha=8, num_heads=lora_heads, dropout=0.0),
        seg=SegConfig(d_model=hidden, vit_dim=vision.hidden_size, prompt_embed_dim=16, depth=1, qg_layers=1,
                      avs_query_num=seg_queries, low_res_mask_size=2 * image_size // patch * 2,
                      image_size=image_size, patch_size=patch, two_way_mlp_dim=32, two_way_heads=2,
                      query_generator_heads=2, query_generator_ffn=32),
        special_token_ids=tokens,
        pad_token_id=PAD_TOKEN_ID,
    )


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


def model_config(model: ModelConfig, base_vocab: int | None = None) -> CrabConfig:
    """The preset's CrabConfig with the run's options (:func:`apply_run_options`); ``base_vocab``
    (the tokenizer's text ids) resizes the vocabulary unless ``model.base_vocab`` is set (> 0)."""
    if model.preset == "tiny":
        cfg = tiny_crab_config(lora_heads=model.lora.num_heads)
    elif model.preset == "crab_7b":
        cfg = paper_crab_config()
    elif model.preset == "checkpoint":
        if not model.init_checkpoint:
            raise ValueError("config model.preset='checkpoint' needs model.init_checkpoint=<converted dir>")
        cfg = config_io.load_crab_config(model.init_checkpoint)
    else:
        raise ValueError(f"config model.preset={model.preset!r}; known: {PRESETS}")
    base = int(model.base_vocab) if int(model.base_vocab) > 0 else base_vocab
    return with_base_vocab(apply_run_options(cfg, model), base)


def with_base_vocab(cfg: CrabConfig, base_vocab: int | None) -> CrabConfig:
    """``cfg`` with ``base_vocab`` text ids before Crab's added tokens (None: unchanged)."""
    if base_vocab is None:
        return cfg
    tokens = special_token_ids(int(base_vocab), len(cfg.mask_token_ids))
    if tokens == dict(cfg.special_token_ids):
        return cfg
    llama = dataclasses.replace(cfg.llama, vocab_size=int(base_vocab) + len(tokens))
    return dataclasses.replace(cfg, llama=llama, special_token_ids=tokens)


def apply_run_options(cfg: CrabConfig, model_cfg: ModelConfig) -> CrabConfig:
    """``cfg`` (a preset's sizes) with the run's dtypes, scan, remat, vocab padding, LoRA and seg sizes."""
    llama = dataclasses.replace(cfg.llama, scan_layers=bool(model_cfg.scan_layers), remat=model_cfg.remat,
                                attention=resolve_attention(model_cfg.attention),
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
    return dataclasses.replace(cfg, llama=llama, lora=lora, seg=seg, dtype=model_cfg.dtype,
                               seg_chunk=int(model_cfg.seg_chunk), frame_chunk=int(model_cfg.frame_chunk),
                               audio_chunk=int(model_cfg.audio_chunk))


def unused_modules(model: ModelConfig, data: DataConfig) -> tuple[str, ...]:
    """The modules a run never uses, as the original leaves them unbuilt: the audio branch when
    every task is visual only (visual and segmentation pretraining: ``--audio_branch False``),
    the visual branch when every task is audio only (audio pretraining), the seg module
    without ``model.seg_branch``. The model still has them (one static structure for every
    stage), but a converted checkpoint need not hold them."""
    tasks = tuple(data.tasks)
    needs = task_needs(tasks, RUN_MODES)
    known = {t for t, _ in needs}
    unused = []
    if tasks and known == set(tasks):  # a task whose media is not known may show anything
        if not any(n.frames for n in needs.values()):
            unused += VISUAL_MODULES
        if not any(n.audio_segments for n in needs.values()):
            unused += AUDIO_MODULES
    if not model.seg_branch:
        unused.append(SEG_MODULE)
    return tuple(unused)
