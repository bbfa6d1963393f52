"""A :class:`CrabPlusConfig` from the HF Qwen2.5-Omni ``config.json`` (or its ``thinker_config``).

The thinker's text model is Qwen2: LLaMA's block with biases on q/k/v (not o), untied head,
M-RoPE (``rope_scaling.mrope_section``). The vision / audio sub-configs map one to one onto
:class:`QwenVisionConfig` / :class:`QwenAudioConfig`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from crab_jax.families.crab_plus.model import CrabPlusConfig, ThinkerTokens
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qwen_audio import QwenAudioConfig
from crab_jax.models.qwen_vision import QwenVisionConfig

# Execution options shared by the three towers (``model.scan_layers`` etc. of a run).
TOWER_OPTIONS = ("scan_layers", "remat", "param_dtype")


def thinker_section(config: Mapping[str, Any], source: str = "config") -> Mapping[str, Any]:
    """The thinker config of a full ``Qwen2_5OmniConfig`` dict, or the dict itself."""
    thinker = config.get("thinker_config", config)
    for key in ("text_config", "vision_config", "audio_config"):
        if key not in thinker:
            raise ValueError(f"{source}: no {key!r}: not a Qwen2.5-Omni (thinker) config")
    return thinker


def text_config(text: Mapping[str, Any], **options) -> LlamaConfig:
    """The Qwen2 text model as a :class:`LlamaConfig` (q/k/v biased, o not, M-RoPE)."""
    if text.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"text hidden_act {text['hidden_act']!r}: Qwen2 uses silu")
    if text.get("use_sliding_window"):
        raise NotImplementedError("use_sliding_window: Qwen2.5-Omni's thinker does not use it")
    rope = text.get("rope_scaling") or {}
    return LlamaConfig(
        vocab_size=text["vocab_size"], hidden_size=text["hidden_size"], intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"], num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
        rms_norm_eps=text.get("rms_norm_eps", 1e-6), rope_theta=text.get("rope_theta", 1e6),
        max_position_embeddings=text.get("max_position_embeddings", 32768),
        tie_word_embeddings=text.get("tie_word_embeddings", False),
        attention_bias=True, attention_out_bias=False, mlp_bias=False,
        mrope_section=tuple(rope["mrope_section"]) if rope.get("mrope_section") else None, **options)


def thinker_config_from_hf(config: Mapping[str, Any], *, lora: ILoRAConfig | None, dtype="float32",
                           frame_size: int = 224, vocab_pad_multiple: int = 1, source: str = "config",
                           **options) -> CrabPlusConfig:
    """``config.json`` dict -> :class:`CrabPlusConfig`; ``options`` (:data:`TOWER_OPTIONS`) go to every tower."""
    unknown = set(options) - set(TOWER_OPTIONS)
    if unknown:
        raise TypeError(f"unknown tower options {sorted(unknown)}; known: {TOWER_OPTIONS}")
    t = thinker_section(config, source)
    tokens = ThinkerTokens(
        pad=t["pad_token_id"], eos=t["eos_token_id"], audio=t["audio_token_index"], image=t["image_token_index"],
        video=t["video_token_index"], audio_start=t["audio_start_token_id"], audio_end=t["audio_end_token_id"],
        vision_start=t["vision_start_token_id"], vision_end=t["vision_end_token_id"])
    return CrabPlusConfig(
        text=text_config(t["text_config"], vocab_pad_multiple=vocab_pad_multiple, **options),
        vision=QwenVisionConfig.from_hf(t["vision_config"], **options),
        audio=QwenAudioConfig.from_hf(t["audio_config"], **options),
        lora=lora, tokens=tokens, position_id_per_seconds=t.get("position_id_per_seconds", 25),
        seconds_per_chunk=t.get("seconds_per_chunk", 2), frame_size=frame_size, dtype=dtype)


def load_hf_config(model_dir: str) -> dict:
    """``<model_dir>/config.json`` as a dict, naming the file when it is missing or not JSON."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config.json (expected an HF Qwen2.5-Omni model directory)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
