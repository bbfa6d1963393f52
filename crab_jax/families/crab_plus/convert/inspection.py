"""``inspect`` for Crab+: which file and tower a torch key belongs to, and the check of a
converted checkpoint against its crab_plus_config.json."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from crab_jax.checkpoints.convert.family_converter import CheckpointCheck
from crab_jax.families.crab_plus.convert import config_io
from crab_jax.families.crab_plus.convert.thinker_table import (HF_PREFIX, TOWERS, skipped_reason, thinker_table)
from crab_jax.families.crab_plus.convert.to_torch import check_arrays
from crab_jax.families.crab_plus.convert.variables import canonical_config
from crab_jax.families.crab_plus.model import CrabPlusConfig, ThinkerTokens
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qwen_audio import QwenAudioConfig
from crab_jax.models.qwen_vision import QwenVisionConfig


def _any_size_config() -> CrabPlusConfig:
    """A thinker config whose table matches keys of any size (its rows do not depend on sizes,
    only on the layout: Qwen2 biases, I-LoRA on)."""
    return CrabPlusConfig(text=LlamaConfig(attention_bias=True, attention_out_bias=False), vision=QwenVisionConfig(),
                          audio=QwenAudioConfig(), lora=ILoRAConfig(), tokens=ThinkerTokens(*range(9)))


def classify_keys(keys: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """key -> ``'hf:<tower>'`` (the HF checkpoint's thinker), ``'adapter:<tower>'``
    (finetune_weights.bin) or ``'skipped:<name>'`` (talker / token2wav); plus unmatched keys."""
    table = thinker_table(_any_size_config())
    matched, unmatched = {}, []
    for key in keys:
        if skipped_reason(key) is not None:
            matched[key] = "skipped:" + key.split(".", 1)[0]
            continue
        hit = table.torch_key_to_jax(key)
        if hit is None:
            unmatched.append(key)
            continue
        where = "hf" if key.startswith(HF_PREFIX) else "adapter"
        matched[key] = f"{where}:{TOWERS.get(hit[1].split('.', 1)[0], '?')}"
    return matched, unmatched


def check_checkpoint(folder: str, arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> CheckpointCheck:
    """The arrays (name -> (shape, dtype)) of a converted checkpoint against its config's model."""
    config = config_io.load_config(folder)
    try:
        check_arrays(arrays, config, source=folder)
        problems = None
    except ValueError as e:  # MappingError, or a config whose model cannot be built
        problems = str(e)
    table = thinker_table(canonical_config(config.thinker))
    unmatched = table.unmatched_jax(arrays)
    lora = config.thinker.lora
    about = (f"Crab+ thinker; contents: {list(config.contents)}; I-LoRA: "
             + (f"r {lora.r}, {lora.num_heads} heads, alpha {lora.alpha:g}" if lora else "none")
             + f"; HF config.json: {'kept' if config.hf_config is not None else 'none'}")
    return CheckpointCheck(about=about, problems=problems, unmatched=unmatched)
