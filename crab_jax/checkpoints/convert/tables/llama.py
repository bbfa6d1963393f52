"""Mapping table of the HF LLaMA / Qwen2 decoder (optionally with peft_hyper I-LoRA keys).

HF keys -> crab_jax paths::

    model.embed_tokens.weight                      -> model.embed_tokens.weight      (vocab padding)
    model.layers.{layer}.self_attn.q_proj.weight   -> model.layers.{layer}.self_attn.q_proj.weight  (transpose)
    model.layers.{layer}.self_attn.q_proj.bias     -> model.layers.{layer}.self_attn.q_proj.bias    (if biased)
    model.layers.{layer}.self_attn.q_proj.lora_B{head}.weight
                                                   -> model.layers.{layer}.self_attn.q_proj.lora_B  (stack head)
    lm_head.weight                                 -> lm_head.weight                 (transpose + vocab padding)

Bias rows exist exactly where the model has a bias: q/k/v with ``attention_bias``, o with
``attention_out_bias`` (Qwen2: q/k/v biased, o not), the MLP with ``mlp_bias``; so a stray
bias tensor is named as a key no row matches.

Scanned layers (``cfg.scan_layers``) drop ``{layer}`` from the JAX path and stack it as the
leading axis (``stack=("layer",)``; ``lora_B`` gets ``stack=("layer", "head")``).

Vocabulary padding (``cfg.vocab_pad_multiple > 1``): the embedding / LM-head rows are padded
with zeros from ``cfg.vocab_size`` to ``cfg.padded_vocab_size`` on the way in and stripped on
the way out, so the round trip stays bit-exact. A tensor whose row count is not
``cfg.vocab_size`` is passed through unpadded so the shape check reports it as it is.

Tied embeddings (``tie_word_embeddings``): the model has no ``lm_head`` parameter and the
table has no ``lm_head.weight`` row; drop that key first (:func:`drop_tied_lm_head`; HF's
safetensors files do not store it anyway).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from crab_jax.checkpoints.convert.mapping import IDENTITY, LINEAR, MappingTable, Rule, Transform
from crab_jax.checkpoints.convert.tables.ilora import ilora_rules
from crab_jax.models.ilora import DEFAULT_TARGETS
from crab_jax.models.llama import LlamaConfig

ATTN_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")


def vocab_padding(vocab_size: int, padded_size: int, *, transpose: bool) -> Transform:
    """torch ``[vocab, embed]`` <-> JAX ``[padded, embed]`` (or ``[embed, padded]`` if ``transpose``)."""
    if padded_size == vocab_size:
        return LINEAR if transpose else IDENTITY

    def to_jax(w: np.ndarray) -> np.ndarray:
        if w.shape[0] == vocab_size:
            w = np.concatenate([w, np.zeros((padded_size - vocab_size,) + w.shape[1:], w.dtype)], axis=0)
        return np.ascontiguousarray(w.T) if transpose else w

    def to_torch(w: np.ndarray) -> np.ndarray:
        w = w.T if transpose else w
        if w.shape[0] == padded_size:
            w = w[:vocab_size]
        return np.ascontiguousarray(w)

    name = f"{'linear_' if transpose else ''}vocab_pad_{vocab_size}_to_{padded_size}"
    return Transform(name, to_jax, to_torch)


def projection_has_bias(cfg: LlamaConfig, proj: str) -> bool:
    """Whether ``LlamaForCausalLM(cfg)``'s projection ``proj`` has a bias."""
    if proj in MLP_PROJS:
        return cfg.mlp_bias
    out_bias = cfg.attention_bias if cfg.attention_out_bias is None else cfg.attention_out_bias
    return out_bias if proj == "o_proj" else cfg.attention_bias


def _projection_rules(torch_prefix: str, jax_prefix: str, lora: bool, bias: bool, scanned: bool) -> list[Rule]:
    """Rows of one projection; ``scanned`` turns the torch-only ``{layer}`` into the leading axis."""
    if lora:
        local = ilora_rules(bias=bias)
    else:
        local = [Rule("weight", "weight", LINEAR)] + ([Rule("bias", "bias", IDENTITY)] if bias else [])
    extra_stack = ("layer",) if scanned else ()
    # One replace (prefix and stack together): a Rule validates its placeholders on creation.
    return [dataclasses.replace(r, torch=torch_prefix + r.torch, jax=jax_prefix + r.jax, stack=extra_stack + r.stack)
            for r in local]


def llama_table(cfg: LlamaConfig, lora: bool, *, targets: tuple[str, ...] = DEFAULT_TARGETS) -> MappingTable:
    """Rows for ``LlamaForCausalLM(cfg, lora=ILoRAConfig(targets=targets) if lora else None)``."""
    layer_jax = "model.layers." if cfg.scan_layers else "model.layers.{layer}."
    layer_torch = "model.layers.{layer}."
    stack = ("layer",) if cfg.scan_layers else ()
    rules = [
        Rule("model.embed_tokens.weight", "model.embed_tokens.weight",
             vocab_padding(cfg.vocab_size, cfg.padded_vocab_size, transpose=False)),
        Rule("model.norm.weight", "model.norm.weight", IDENTITY),
    ]
    if not cfg.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", "lm_head.weight",
                          vocab_padding(cfg.vocab_size, cfg.padded_vocab_size, transpose=True)))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        rules.append(Rule(f"{layer_torch}{norm}.weight", f"{layer_jax}{norm}.weight", IDENTITY, stack=stack))
    for block, projs in (("self_attn", ATTN_PROJS), ("mlp", MLP_PROJS)):
        for proj in projs:
            prefix = f"{block}.{proj}."
            rules += _projection_rules(layer_torch + prefix, layer_jax + prefix, lora and proj in targets,
                                       projection_has_bias(cfg, proj), cfg.scan_layers)
    return MappingTable("llama" + ("_ilora" if lora else ""), rules)


def drop_tied_lm_head(state: Mapping[str, np.ndarray], cfg: LlamaConfig) -> dict:
    """With tied embeddings, ``lm_head.weight`` is the embedding: check that and drop the key."""
    state = dict(state.items())
    if cfg.tie_word_embeddings and "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        embed = state.get("model.embed_tokens.weight")
        if embed is not None and not np.array_equal(np.asarray(head), np.asarray(embed)):
            raise ValueError("tie_word_embeddings is set but lm_head.weight differs from model.embed_tokens.weight")
    return state
