"""Training FLOPs per LLM token of the Crab+ thinker (the MFU numerator), all three towers.

Same convention as Crab's (:mod:`crab_jax.families.crab.flops`): matmul FLOPs only, ``2 N``
per token per forward plus the attention products over the full (unmasked) key length;
training = ``2 fwd + 2 N_t`` for a tower the gradient flows through (its own I-LoRA weights
train, so activation gradients run through it), ``fwd`` for a frozen tower with nothing to
train. The towers' FLOPs are per sample, so they are spread over the ``seq_len`` LLM tokens
of a sample of the bucket (:class:`~crab_jax.families.crab_plus.batch_spec.BatchSpec`: its
``visual_slots`` temporal slices at ``frame_size``² and ``audio_chunk_slots`` audio chunks,
every slot counted, as every position of the bucket is).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from crab_jax.families.crab_plus.batch_spec import BatchSpec
from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.models.ilora import ILoRAConfig


@dataclasses.dataclass(frozen=True)
class ThinkerFlops:
    """per_token: model FLOPs per LLM token; recompute_per_token: remat's extra forward (all
    towers); scan_uncounted_per_token: what the three scanned stacks (``scan_layers``) run beyond
    their first iteration — XLA's cost analysis counts a loop body once, the AOT check adds this."""

    per_token: float
    recompute_per_token: float
    scan_uncounted_per_token: float


def _adapter(lora: ILoRAConfig | None, name: str, fan_in: int, fan_out: int) -> float:
    """Matmul parameters the adapter adds to one projection (A, the k B heads, the router)."""
    if lora is None or name not in lora.targets:
        return 0.0
    return fan_in * lora.r + lora.num_heads * lora.r * fan_out + fan_in * lora.num_heads


def _tower(fwd_params: float, attn: float, adapters: float, trains: bool, remat: bool) -> tuple[float, float]:
    """(training FLOPs, remat recompute FLOPs) of ``fwd_params`` matmul weights applied once each."""
    fwd = 2.0 * fwd_params + attn
    return (2.0 * fwd + 2.0 * adapters if trains else fwd), (fwd if remat and trains else 0.0)


def thinker_flops(cfg: CrabPlusConfig, spec: BatchSpec, trainable_paths: Sequence[str], *,
                  remat: str = "none") -> ThinkerFlops:
    seq_len = spec.seq_len
    trains = {t: any(p.startswith(t + ".") and "lora_" in p for p in trainable_paths)
              for t in ("model", "visual", "audio_tower")}
    full = remat != "none"
    # LLM, per token.
    t = cfg.text
    d, L, m = t.hidden_size, t.num_hidden_layers, t.intermediate_size
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d), "gate_proj": (d, m),
              "up_proj": (d, m), "down_proj": (m, d)}
    layer = sum(i * o for i, o in shapes.values())
    lora_layer = sum(_adapter(cfg.tower_lora("text"), n, i, o) for n, (i, o) in shapes.items()) if trains["model"] else 0.0
    head = d * t.vocab_size
    llm_layers, llm_recompute = _tower(L * (layer + lora_layer), 4.0 * L * seq_len * q, L * lora_layer, True, full)
    llm = llm_layers + 4.0 * head  # the LM head: forward + activation gradient
    # Vision, per temporal slice.
    v = cfg.vision
    patches = cfg.patches_per_slice
    window = min(patches, (v.window_units ** 2) * v.merge_unit)
    vshapes = {"q": (v.hidden_size, v.hidden_size), "k": (v.hidden_size, v.hidden_size),
               "v": (v.hidden_size, v.hidden_size), "proj": (v.hidden_size, v.hidden_size),
               "gate_proj": (v.hidden_size, v.intermediate_size), "up_proj": (v.hidden_size, v.intermediate_size),
               "down_proj": (v.intermediate_size, v.hidden_size)}
    v_lora = sum(_adapter(cfg.tower_lora("vision"), n, i, o) for n, (i, o) in vshapes.items())
    v_blocks = patches * v.depth * (sum(i * o for i, o in vshapes.values()) + v_lora)
    merged = patches // v.merge_unit
    v_ends = (patches * cfg.patch_dim * v.hidden_size  # patch embedding and merger: outside the block stack
              + merged * (v.merge_unit * v.hidden_size) * (v.merge_unit * v.hidden_size + v.out_hidden_size))
    full_blocks = len(v.fullatt_block_indexes)
    v_attn = 4.0 * patches * v.hidden_size * (full_blocks * patches + (v.depth - full_blocks) * window)
    vis_stack = _tower(v_blocks, v_attn, patches * v.depth * v_lora, trains["visual"], full)
    vis, vis_re = (x + y for x, y in zip(vis_stack, _tower(v_ends, 0.0, 0.0, trains["visual"], full)))
    slices = spec.visual_slots
    # Audio, per chunk of 2 * n_window mel frames (n_window frames after the conv).
    a = cfg.audio
    w, da = a.n_window, a.d_model
    ashapes = {"q_proj": (da, da), "k_proj": (da, da), "v_proj": (da, da), "out_proj": (da, da),
               "fc1": (da, a.encoder_ffn_dim), "fc2": (a.encoder_ffn_dim, da)}
    a_lora = sum(_adapter(cfg.tower_lora("audio"), n, i, o) for n, (i, o) in ashapes.items())
    a_layers = w * a.encoder_layers * (sum(i * o for i, o in ashapes.values()) + a_lora)
    a_ends = 2 * w * 3 * a.num_mel_bins * da + w * 3 * da * da + (w // 2) * da * a.output_dim  # convs, projection
    aud_stack = _tower(a_layers, 4.0 * a.encoder_layers * w * w * da, w * a.encoder_layers * a_lora,
                       trains["audio_tower"], full)
    aud, aud_re = (x + y for x, y in zip(aud_stack, _tower(a_ends, 0.0, 0.0, trains["audio_tower"], full)))
    chunks = spec.audio_chunk_slots
    towers = (slices * vis + chunks * aud) / seq_len
    recompute = llm_recompute + (slices * vis_re + chunks * aud_re) / seq_len
    # Every stack but its first iteration (a vision block's share averages its windowed and full
    # attention blocks).
    uncounted = ((L - 1) / L * (llm_layers + llm_recompute)
                 + (v.depth - 1) / v.depth * slices * sum(vis_stack) / seq_len
                 + (a.encoder_layers - 1) / a.encoder_layers * chunks * sum(aud_stack) / seq_len)
    return ThinkerFlops(llm + towers, recompute, uncounted)
