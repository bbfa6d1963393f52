"""Training FLOPs per token of Crab's LLM, the numerator of MFU (:mod:`crab_jax.training.metrics`).

MFU (model FLOPs utilisation), as reported::

    N      = LLM matmul parameters (embeddings excluded, LM head included)
    N_t    = the trainable part of N (LoRA A/B/router, a trained LM head, ...)
    fwd    = 2 N + 4 L S d      FLOPs per token (S = bucket length, d = heads x head_dim;
                                 QK^T and AV counted over the full, unmasked S x S)
    train  = fwd + (fwd - 2 N) + 2 N + 2 N_t
           = 2 fwd + 2 N_t      backward: activation grads through every layer (frozen or not,
                                 the trainable projectors sit below the LLM), weight grads only
                                 for trainable weights
    MFU    = train x tokens_per_step / step_time / (devices x peak FLOP/s per device)

Encoders (CLIP, BEATs: frozen, forward only) and Q-Formers are not counted; the
recomputation of remat is not counted either (standard MFU convention).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from crab_jax.families.crab.batch_spec import BatchSpec
from crab_jax.families.crab.model import CrabConfig


@dataclasses.dataclass(frozen=True)
class LlmFlops:
    """Per-token training FLOPs of the LLM and the parts the AOT check needs.

    per_token: model FLOPs (the MFU numerator), ``2 fwd + 2 N_t``.
    recompute_per_token: one more forward through the decoder layers (``remat='full'``; executed,
      not model FLOPs).
    scan_uncounted_per_token: what a scanned decoder (``scan_layers``) runs beyond its first
      iteration, ``(L - 1)`` layers' share of ``per_token + recompute_per_token`` (the LM head
      excluded): XLA's cost analysis counts a loop body once, the AOT check adds this back.
    """

    per_token: float
    recompute_per_token: float
    scan_uncounted_per_token: float


def llm_flops(cfg: CrabConfig, spec: BatchSpec, trainable_paths: Sequence[str], *, remat: str = "none") -> LlmFlops:
    """The FLOPs of the module docstring for the bucket's ``spec.seq_len``-token sequences."""
    seq_len = spec.seq_len
    ll = cfg.llama
    d, L = ll.hidden_size, ll.num_hidden_layers
    q, kv = ll.num_attention_heads * ll.head_dim, ll.num_key_value_heads * ll.head_dim
    layer_params = d * q + 2 * d * kv + q * d + 3 * d * ll.intermediate_size
    head_params = 0 if ll.tie_word_embeddings else d * ll.vocab_size
    head_trains = any(p.startswith("llm.lm_head") for p in trainable_paths)
    n_t = 0.0
    lora = cfg.lora
    if lora is not None and any(re.search(r"lora_", p) for p in trainable_paths):
        shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                  "gate_proj": (d, ll.intermediate_size), "up_proj": (d, ll.intermediate_size),
                  "down_proj": (ll.intermediate_size, d)}
        for t in lora.targets:
            i, o = shapes[t]
            n_t += L * (i * lora.r + lora.num_heads * lora.r * o + i * lora.num_heads)
    if head_trains:
        n_t += d * ll.vocab_size
    fwd_layers = 2.0 * L * layer_params + 4.0 * L * seq_len * q   # one forward through the decoder layers
    fwd = fwd_layers + 2.0 * head_params
    per_token = 2.0 * fwd + 2.0 * n_t
    recompute = fwd_layers if remat == "full" else 0.0
    # The LM head's part of ``per_token`` (2 fwd + a weight gradient when it trains); the rest is the layers'.
    head_part = 4.0 * head_params + (2.0 * head_params if head_trains else 0.0)
    return LlmFlops(per_token, recompute, (L - 1) * (per_token - head_part + recompute) / L)
