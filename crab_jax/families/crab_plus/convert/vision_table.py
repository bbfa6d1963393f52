"""Mapping rows of the Qwen2.5-Omni thinker's vision encoder (``visual.*``, + Crab+ I-LoRA).

Torch keys are relative to the thinker module (checkpoint ``thinker.`` + key; adapter file
``base_model.model.`` + key); the JAX paths are the same names on the model whose ``visual``
attribute is a :class:`~crab_jax.models.qwen_vision.QwenVisionEncoder`::

    visual.patch_embed.proj.weight                 [width, C, T, p, p] -> [C*T*p*p, width]
    visual.blocks.{layer}.norm{1,2}.weight         copied
    visual.blocks.{layer}.attn.{q,k,v,proj}.*      Linear (transposed weight, bias)
    visual.blocks.{layer}.mlp.{gate,up,down}_proj.* Linear; with ``lora`` also
        .lora_A.weight [r, in] -> lora_A [in, r], .lora_B{head}.weight [out, r] -> lora_B [k, r, out],
        .lora_route.weight [k, in] -> lora_route [in, k]
    visual.merger.ln_q.weight, visual.merger.mlp.{0,2}.*

With ``cfg.scan_layers`` the JAX paths drop ``{layer}`` (``visual.blocks.attn.q.weight``) and
the layer becomes the leading axis (``stack=("layer",)``, before ``head`` for ``lora_B``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from crab_jax.checkpoints.convert.mapping import IDENTITY, LINEAR, Rule, Transform
from crab_jax.checkpoints.convert.tables.ilora import ilora_rules
from crab_jax.models.qwen_vision import QwenVisionConfig

ATTN_PROJS = ("q", "k", "v", "proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")  # Crab+'s I-LoRA targets in the vision tower


def conv3d_patch(cfg: QwenVisionConfig) -> Transform:
    """torch Conv3d ``[width, C, T, p, p]`` <-> JAX ``[C*T*p*p, width]`` (the pixel row's
    column order is (C, T, p, p), so the flattened kernel is a Linear weight)."""
    kernel = (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)

    def to_jax(w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)

    def to_torch(w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.T).reshape(w.shape[1], *kernel)

    return Transform("conv3d_patch_{}x{}x{}x{}".format(*kernel), to_jax, to_torch)


def _linear_rows(lora: bool) -> list[Rule]:
    """Rows of one biased (I-LoRA) linear relative to its own name: weight, bias (+ adapter tensors)."""
    return ilora_rules() if lora else [Rule("weight", "weight", LINEAR), Rule("bias", "bias", IDENTITY)]


def vision_rules(cfg: QwenVisionConfig, lora: bool) -> list[Rule]:
    """Rows for ``QwenVisionEncoder(cfg, ILoRAConfig(...) if lora else None)`` under ``visual.``."""
    block_torch = "visual.blocks.{layer}."
    block_jax = "visual.blocks." if cfg.scan_layers else block_torch
    stack = ("layer",) if cfg.scan_layers else ()

    def block_rows(name: str, rows: list[Rule]) -> list[Rule]:
        # One replace (prefix and stack together): a Rule validates its placeholders on creation.
        return [dataclasses.replace(r, torch=f"{block_torch}{name}.{r.torch}", jax=f"{block_jax}{name}.{r.jax}",
                                    stack=stack + r.stack) for r in rows]

    rules = [Rule("visual.patch_embed.proj.weight", "visual.patch_embed.proj.weight", conv3d_patch(cfg)),
             Rule("visual.merger.ln_q.weight", "visual.merger.ln_q.weight", IDENTITY)]
    for i in (0, 2):
        rules += [r.with_prefix(f"visual.merger.mlp.{i}.", f"visual.merger.mlp.{i}.") for r in _linear_rows(False)]
    for norm in ("norm1", "norm2"):
        rules += block_rows(norm, [Rule("weight", "weight", IDENTITY)])
    for proj in ATTN_PROJS:
        rules += block_rows(f"attn.{proj}", _linear_rows(False))
    for proj in MLP_PROJS:
        rules += block_rows(f"mlp.{proj}", _linear_rows(lora))
    return rules
