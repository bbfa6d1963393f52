"""Training metrics: on-device reductions (pure, jit-friendly) and host-side summaries.

On device every quantity is a *sum* plus a *count* so micro-batches and steps add up
exactly; the host divides. Router usage is the mean gate per I-LoRA head over the real
(non-padding) tokens of the samples of one task, per contiguous group of decoder layers.

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

import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from crab_jax.families.crab.model import CrabConfig
from crab_jax.models.losses import per_sample_lm_sums
from crab_jax.models.ilora import GATES_INTERMEDIATE

# Dense bf16 peak FLOP/s per device by ``device_kind`` substring (lower-case).
PEAK_FLOPS = {"tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
              "tpu v6": 918e12, "h100": 989e12, "h200": 989e12, "a100": 312e12}


# -- on device ----------------------------------------------------------------------------------


def per_task_sums(values: jax.Array, task_id: jax.Array, num_tasks: int) -> jax.Array:
    """``[b, ...]`` per-sample values -> ``[num_tasks, ...]`` sums."""
    onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32)  # [b, T]
    return jnp.tensordot(onehot, values.astype(jnp.float32), axes=(0, 0))


def _layer_of(path) -> int | None:
    for i, p in enumerate(path[:-1]):
        if str(p) == "layers" and isinstance(path[i + 1], int):
            return int(path[i + 1])
    return None


def router_usage_sums(intermediates, attention_mask: jax.Array, task_id: jax.Array, *, num_tasks: int,
                      num_layers: int, groups: int) -> tuple[jax.Array, jax.Array] | None:
    """Sum over samples of each sample's mean gate, ``[num_tasks, groups, k]``, and the count
    ``[num_tasks, groups]`` (samples x projections) to divide by. None without gates."""
    from flax import nnx

    mask = attention_mask.astype(jnp.float32)  # [b, S]
    denom = jnp.maximum(mask.sum(1), 1.0)      # [b]
    onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32)  # [b, T]
    total, count = None, None
    for path, var in nnx.to_flat_state(intermediates):
        if str(path[-1]) != GATES_INTERMEDIATE:
            continue
        for gates in var.get_value():
            layer = _layer_of(path)
            if gates.ndim == 4:   # scanned: [L, b, S, k]
                per_sample = jnp.einsum("lbsk,bs->lbk", gates, mask) / denom[None, :, None]
                group_of = jnp.arange(gates.shape[0]) * groups // num_layers
                group_onehot = jax.nn.one_hot(group_of, groups, dtype=jnp.float32)  # [L, G]
                sums = jnp.einsum("lbk,bt,lg->tgk", per_sample, onehot, group_onehot)
                counts = jnp.einsum("bt,lg->tg", onehot, group_onehot)
            else:                 # [b, S, k] of layer `layer`
                per_sample = jnp.einsum("bsk,bs->bk", gates, mask) / denom[:, None]
                g = 0 if layer is None else layer * groups // num_layers
                sel = jax.nn.one_hot(g, groups, dtype=jnp.float32)
                sums = jnp.einsum("bk,bt,g->tgk", per_sample, onehot, sel)
                counts = jnp.einsum("bt,g->tg", onehot, sel)
            total = sums if total is None else total + sums
            count = counts if count is None else count + counts
    return None if total is None else (total, count)


# -- host side ------------------------------------------------------------------------------------


def summarize(sums: Mapping[str, "np.ndarray"], tasks: Sequence[str]) -> dict[str, float]:
    """Turns the step's sums into named scalars (``loss``, ``task/<t>/lm_loss``, ``router/...``)."""
    import numpy as np

    out = {}
    for k in ("loss", "lm_loss", "mask_loss", "grad_norm", "lr"):
        if k in sums:
            out[k] = float(sums[k])
    nll, tok = np.asarray(sums["task_nll"]), np.asarray(sums["task_tokens"])
    n = np.asarray(sums["task_samples"])
    for t, name in enumerate(tasks):
        if n[t] > 0:
            out[f"task/{name}/lm_loss"] = float(nll[t] / max(tok[t], 1.0))
            if "task_mask_loss" in sums:
                out[f"task/{name}/mask_loss"] = float(np.asarray(sums["task_mask_loss"])[t] / n[t])
            out[f"task/{name}/samples"] = float(n[t])
    if "router_sum" in sums:
        rs, rc = np.asarray(sums["router_sum"]), np.asarray(sums["router_count"])
        for t, name in enumerate(tasks):
            for g in range(rs.shape[1]):
                if rc[t, g] > 0:
                    for h in range(rs.shape[2]):
                        out[f"router/{name}/group{g}/head{h}"] = float(rs[t, g, h] / rc[t, g])
    return out


def llm_flops_per_token(cfg: CrabConfig, seq_len: int, trainable_paths: Sequence[str]) -> float:
    """Training FLOPs per token of the LLM (see the module docstring)."""
    ll = cfg.llama
    d, L = ll.hidden_size, ll.num_hidden_layers
    q, kv = ll.num_attention_heads * ll.head_dim, ll.num_key_value_heads * ll.head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * ll.intermediate_size
    n = L * per_layer + (0 if ll.tie_word_embeddings else d * ll.vocab_size)
    lora = cfg.lora
    n_t = 0.0
    if lora is not None and any(re.search(r"lora_", p) for p in trainable_paths):
        shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                  "gate_proj": (d, ll.intermediate_size), "up_proj": (d, ll.intermediate_size),
                  "down_proj": (ll.intermediate_size, d)}
        for t in lora.targets:
            i, o = shapes[t]
            n_t += L * (i * lora.r + lora.num_heads * lora.r * o + i * lora.num_heads)
    if any(p.startswith("llm.lm_head") for p in trainable_paths):
        n_t += d * ll.vocab_size
    fwd = 2.0 * n + 4.0 * L * seq_len * q
    return 2.0 * fwd + 2.0 * n_t


def peak_flops_per_device(configured: float = 0.0) -> float:
    """Configured value, else a table lookup on the device kind; 0 when unknown (no MFU)."""
    if configured > 0:
        return float(configured)
    kind = jax.devices()[0].device_kind.lower()
    for key, value in PEAK_FLOPS.items():
        if key in kind:
            return value
    return 0.0


def mfu(flops_per_token: float, tokens: float, seconds: float, num_devices: int, peak: float) -> float | None:
    if peak <= 0 or seconds <= 0:
        return None
    return flops_per_token * tokens / seconds / (num_devices * peak)
