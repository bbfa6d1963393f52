"""Mapping rows of the Qwen2.5-Omni audio tower (:class:`~crab_jax.models.qwen_audio.QwenAudioEncoder`).

Torch keys are relative to the thinker (the checkpoint's ``thinker.`` and the adapter file's
``base_model.model.`` prefixes stripped by the caller); the JAX paths are the same names::

    audio_tower.conv1.weight [d, mel, 3]              -> audio_tower.conv1.weight [3, mel, d]  (CONV1D)
    audio_tower.layers.{layer}.self_attn.q_proj.weight -> same path, transposed
    audio_tower.layers.{layer}.self_attn.q_proj.lora_B{head}.weight
                                                       -> ...q_proj.lora_B [k, r, out]  (stack head)
    audio_tower.audio_bos_eos_token.weight             -> same (unused by the forward, kept for strictness)

With ``cfg.scan_layers`` the JAX paths drop ``{layer}`` and stack it as the leading axis.
I-LoRA rows exist for ``q_proj`` / ``k_proj`` / ``v_proj`` only (peft's suffix match: the
tower's ``out_proj``, ``fc1``, ``fc2``, convs and ``proj`` end with no target name); ``k_proj``
has no bias, so its table has no bias row.
"""

from __future__ import annotations

import dataclasses

from crab_jax.checkpoints.convert.mapping import CONV1D, IDENTITY, Rule, linear_rules, norm_rules
from crab_jax.checkpoints.convert.tables.ilora import ilora_rules
from crab_jax.models.qwen_audio import QwenAudioConfig

PREFIX = "audio_tower."
LORA_PROJS = ("q_proj", "k_proj", "v_proj")
_NO_BIAS = ("k_proj",)


def _layer_rules(local: list[Rule], scanned: bool) -> list[Rule]:
    """``local`` rows (relative to one layer) under ``audio_tower.layers.{layer}.``."""
    torch_prefix = f"{PREFIX}layers.{{layer}}."
    jax_prefix = f"{PREFIX}layers." if scanned else torch_prefix
    stack = ("layer",) if scanned else ()
    # One replace (prefix and stack together): a Rule validates its placeholders on creation.
    return [dataclasses.replace(r, torch=torch_prefix + r.torch, jax=jax_prefix + r.jax, stack=stack + r.stack)
            for r in local]


def audio_rules(cfg: QwenAudioConfig, lora: bool) -> list[Rule]:
    """Rows for ``QwenAudioEncoder(cfg, ILoRAConfig(...) if lora else None)`` under ``audio_tower.``.

    ``lora``: the model's I-LoRA targets cover q/k/v (Crab+'s seven target names do).
    """
    top = [Rule("conv1.weight", "conv1.weight", CONV1D), Rule("conv1.bias", "conv1.bias", IDENTITY),
           Rule("conv2.weight", "conv2.weight", CONV1D), Rule("conv2.bias", "conv2.bias", IDENTITY),
           *norm_rules("ln_post"), *linear_rules("proj"),
           Rule("audio_bos_eos_token.weight", "audio_bos_eos_token.weight", IDENTITY)]
    rules = [r.with_prefix(PREFIX, PREFIX) for r in top]
    local: list[Rule] = []
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        name, bias = f"self_attn.{proj}", proj not in _NO_BIAS
        if lora and proj in LORA_PROJS:
            local += ilora_rules(name + ".", name + ".", bias=bias)
        else:
            local += [r for r in linear_rules(name) if bias or not r.torch.endswith(".bias")]
    local += [*linear_rules("fc1"), *linear_rules("fc2"),
              *norm_rules("self_attn_layer_norm"), *norm_rules("final_layer_norm")]
    return rules + _layer_rules(local, cfg.scan_layers)

