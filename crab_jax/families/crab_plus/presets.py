"""Crab+'s model configurations and the run options that resize them.

* ``tiny``: every tower with widths of a few dozen and 56 px frames (tests, the CPU demo);
* ``crab_plus_7b``: the released Qwen2.5-Omni-7B thinker with I-LoRA r=128, alpha=256, 3 heads;
* ``checkpoint``: the ``crab_plus_config.json`` next to a converted checkpoint.

:func:`model_config` is the family hook: the run config's ``model`` section -> the
:class:`CrabPlusConfig` to build.
"""

from __future__ import annotations

import dataclasses

from crab_jax.config.sections import ModelConfig
from crab_jax.families.crab_plus.convert.config_io import load_thinker_config
from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.families.crab_plus.tokens import ADDED_TOKENS, QWEN_BASE_VOCAB, QWEN_CONFIG_VOCAB, thinker_tokens
from crab_jax.models.attention import resolve_attention
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qwen_audio import QwenAudioConfig
from crab_jax.models.qwen_vision import QwenVisionConfig

PRESETS = ("tiny", "crab_plus_7b", "checkpoint")
# The released adapter (finetune_omni.py: lora_nums=3; r / alpha / dropout of its scripts).
PAPER_LORA = ILoRAConfig(r=128, alpha=256.0, num_heads=3, dropout=0.1)


def paper_thinker_config() -> CrabPlusConfig:
    """The Qwen2.5-Omni-7B thinker as released, with Crab+'s I-LoRA in all three towers."""
    text = LlamaConfig(vocab_size=QWEN_CONFIG_VOCAB, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                       rope_theta=1e6, max_position_embeddings=32768, attention_bias=True,
                       attention_out_bias=False, mrope_section=(16, 24, 24))
    vision = QwenVisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
                              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                              fullatt_block_indexes=(7, 15, 23, 31), out_hidden_size=3584)
    audio = QwenAudioConfig(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                            d_model=1280, max_source_positions=1500, n_window=100, output_dim=3584)
    return CrabPlusConfig(text=text, vision=vision, audio=audio, lora=PAPER_LORA,
                          tokens=thinker_tokens(QWEN_BASE_VOCAB))


def tiny_thinker_config(*, base_vocab: int = 64, hidden: int = 32) -> CrabPlusConfig:
    """A thinker small enough for CPU: 2 layers per tower, 56 px frames (16 patches, 4 tokens a
    slice), 0.16-s audio chunks (``n_window`` 8), M-RoPE split (2, 1, 1) of head_dim 8."""
    text = LlamaConfig(vocab_size=base_vocab + len(ADDED_TOKENS), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                       rope_theta=1e6, attention_bias=True, attention_out_bias=False, mrope_section=(2, 1, 1))
    vision = QwenVisionConfig(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, window_size=56,
                              fullatt_block_indexes=(1,), out_hidden_size=hidden)
    audio = QwenAudioConfig(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                            d_model=16, max_source_positions=64, n_window=8, output_dim=hidden)
    return CrabPlusConfig(text=text, vision=vision, audio=audio, lora=ILoRAConfig(r=4, alpha=8.0, dropout=0.0),
                          tokens=thinker_tokens(base_vocab), frame_size=56)


def model_config(model: ModelConfig, base_vocab: int | None = None) -> CrabPlusConfig:
    """The preset's config with the run's options; ``base_vocab`` (the tokenizer's text ids)
    resizes the tiny vocabulary (the real thinker keeps its 152064 rows)."""
    base = int(model.base_vocab) if int(model.base_vocab) > 0 else base_vocab
    if model.preset == "tiny":
        cfg = tiny_thinker_config(base_vocab=base or 64)
    elif model.preset == "crab_plus_7b":
        cfg = paper_thinker_config()
    elif model.preset == "checkpoint":
        if not model.init_checkpoint:
            raise ValueError("config model.preset='checkpoint' needs model.init_checkpoint=<converted dir>")
        cfg = load_thinker_config(model.init_checkpoint)
    else:
        raise ValueError(f"config model.preset={model.preset!r} for model.family='crab_plus'; known: {PRESETS}")
    return apply_run_options(cfg, model)


def apply_run_options(cfg: CrabPlusConfig, model: ModelConfig) -> CrabPlusConfig:
    """``cfg`` with the run's dtypes, scan, remat, vocabulary padding and adapter (``model.lora``)."""
    tower = dict(scan_layers=bool(model.scan_layers), remat=model.remat, param_dtype=model.param_dtype)
    text = dataclasses.replace(cfg.text, vocab_pad_multiple=int(model.vocab_pad_multiple),
                               attention=resolve_attention(model.attention), **tower)
    lora = ILoRAConfig(r=int(model.lora.r), alpha=float(model.lora.alpha), num_heads=int(model.lora.num_heads),
                       dropout=float(model.lora.dropout), targets=tuple(model.lora.targets))
    return dataclasses.replace(cfg, text=text, vision=dataclasses.replace(cfg.vision, **tower),
                               audio=dataclasses.replace(cfg.audio, **tower), lora=lora, dtype=model.dtype)
