"""LLaMA(-2) decoder with I-LoRA in its projections (Crab's language model).

Attribute names mirror Hugging Face's ``LlamaForCausalLM`` state dict, so the converter is
a near-identity map::

    model.embed_tokens.weight                        [vocab_padded, embed]
    model.layers.{i}.input_layernorm.weight          [embed]
    model.layers.{i}.self_attn.{q,k,v,o}_proj.*      (Linear or ILoRALinear, [in, out])
    model.layers.{i}.post_attention_layernorm.weight [embed]
    model.layers.{i}.mlp.{gate,up,down}_proj.*
    model.norm.weight                                [embed]
    lm_head.weight                                   [embed, vocab_padded]

With ``scan_layers=True`` the layers are ONE :class:`LlamaDecoderLayer` whose variables
carry a leading ``layers`` axis (``model.layers.self_attn.q_proj.weight`` is
``[layers, embed, heads]``); it is created with ``nnx.vmap`` and applied with ``nnx.scan``.

Numerics follow HF: RMSNorm statistics in float32, rotary embedding in the ``rotate_half``
layout (the HF checkpoint's q/k rows are already in that order, so no permutation), cos/sin
computed in float32 and cast to the compute dtype, softmax in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.attention import dot_product_attention, merge_heads, split_heads
from crab_jax.models.splash_attention import splash_attention, splash_tiles
from crab_jax.models.ilora import ILoRAConfig, projection
from crab_jax.models.layers import Embed, Linear, RMSNorm, as_dtype, normal_init
from crab_jax.parallel.sharding import constrain

REMAT_POLICIES = ("none", "full", "dots")

# Logical activation axes (parallel.sharding.constrain; no-ops outside the trainer's step).
HIDDEN_ACT = ("activation_batch", "activation_length", "activation_embed")   # [b, s, embed]
HEADS_ACT = ("activation_batch", "activation_length", "activation_heads", None)  # [b, s, heads, d]
KV_ACT = ("activation_batch", "activation_length", "activation_kv", None)        # [b, s, kv_heads, d]
MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")        # [b, s, mlp]
LOGITS_ACT = ("activation_batch", "activation_length", "activation_vocab")   # [b, s, vocab]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """HF ``LlamaConfig`` fields plus crab_jax execution options."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads (multi-head attention)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (and o, unless attention_out_bias says otherwise)
    attention_out_bias: bool | None = None  # None -> attention_bias; Qwen2: q/k/v biased, o not
    mlp_bias: bool = False
    # Multimodal rotary (Qwen2-VL / Qwen2.5-Omni M-RoPE): rotary channel pairs per position
    # stream (temporal, height, width), summing to head_dim / 2; position ids are then
    # ``[3, batch, seq]``. None: plain 1-D rotary on ``[batch, seq]`` positions.
    mrope_section: tuple[int, ...] | None = None
    # crab_jax options
    scan_layers: bool = False
    remat: str = "none"  # one of REMAT_POLICIES, applied per decoder layer
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    vocab_pad_multiple: int = 1  # embed / lm_head rows padded to a multiple (sharding-friendly)
    attention: str = "reference"  # crab_jax.models.attention implementation (resolved: reference | fused)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        object.__setattr__(self, "param_dtype", as_dtype(self.param_dtype))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} not in {REMAT_POLICIES}")
        if self.attention not in ("reference", "fused", "splash"):
            raise ValueError(f"attention {self.attention!r}: expected 'reference', 'fused' or 'splash' "
                             "(resolve 'auto' first)")
        if self.vocab_pad_multiple < 1:
            raise ValueError("vocab_pad_multiple must be >= 1")
        if self.attention_out_bias is None:
            object.__setattr__(self, "attention_out_bias", self.attention_bias)
        if self.mrope_section is not None:
            object.__setattr__(self, "mrope_section", tuple(int(n) for n in self.mrope_section))
            if 2 * sum(self.mrope_section) != self.head_dim:
                raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim / 2 = {self.head_dim // 2}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **options) -> "LlamaConfig":
        """From a HF ``config.json`` dict; ``options`` set the crab_jax fields (scan_layers, ...)."""
        if config.get("rope_scaling"):
            raise NotImplementedError(f"rope_scaling {config['rope_scaling']!r} is not supported (LLaMA-2 has none)")
        if config.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {config['hidden_act']!r}: LLaMA uses silu")
        fields = dict(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=config["num_attention_heads"],
            num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            head_dim=config.get("head_dim"),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=config.get("rope_theta", 10000.0),
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=config.get("attention_bias", False),
            mlp_bias=config.get("mlp_bias", False),
        )
        fields.update(options)
        return cls(**fields)


# -- positions, masks, rotary ---------------------------------------------------------------


def position_ids_from_mask(mask):
    """``[batch, seq]`` 0/1 mask -> position ids ``max(cumsum(mask) - 1, 0)`` (left padding gets 0).

    The one home of the convention: numpy in (the host-side data pipeline) gives numpy out,
    a jax array or tracer gives a jax array."""
    xp = np if isinstance(mask, np.ndarray) else jnp
    return xp.maximum(xp.cumsum(xp.asarray(mask).astype(xp.int32), axis=-1) - 1, 0)


def mrope_streams(mrope_section: tuple[int, ...]) -> np.ndarray:
    """``[head_dim]`` stream (0 temporal, 1 height, 2 width) of each rotary channel.

    HF cuts the ``head_dim`` channels of cos / sin into ``mrope_section * 2`` pieces and piece
    ``i`` takes stream ``i % 3`` (so both halves of the rotate_half layout get the same split).
    """
    sizes = tuple(mrope_section) * 2
    return np.concatenate([np.full(n, i % len(mrope_section), np.int32) for i, n in enumerate(sizes)])


def rotary_cos_sin(position_ids: jax.Array, head_dim: int, theta: float, dtype,
                   mrope_section: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
    """Positions -> cos, sin ``[batch, seq, head_dim]`` (HF layout: freqs repeated twice).

    ``position_ids``: ``[batch, seq]``, or ``[3, batch, seq]`` (temporal / height / width
    streams) with ``mrope_section``: channel ``c`` then rotates by the position of stream
    :func:`mrope_streams` ``[c]``. Angles are computed in float32 like HF (which disables
    autocast there); only the result is cast to the compute dtype.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    inv_freq = jnp.concatenate([inv_freq, inv_freq])  # [head_dim]
    positions = position_ids.astype(jnp.float32)
    if mrope_section is None:
        angles = positions[..., None] * inv_freq  # [b, s, head_dim]
    else:
        if positions.ndim != 3:
            raise ValueError(f"M-RoPE needs position ids [3, batch, seq], got {position_ids.shape}")
        per_channel = jnp.moveaxis(positions[mrope_streams(mrope_section)], 0, -1)  # [b, s, head_dim]
        angles = per_channel * inv_freq
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    """``[..., d] -> [..., d]``: (x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x`` ``[batch, seq, heads, head_dim]``, cos/sin ``[batch, seq, head_dim]``."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + rotate_half(x) * sin


def attention_mask_for(attention_mask: jax.Array, q_offset: jax.Array | int, q_len: int,
                       segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal + padding (+ packing) mask ``[batch, 1, q_len, kv_len]`` (True = may attend).

    ``attention_mask`` ``[batch, kv_len]`` covers every key slot; query ``i`` sits in slot
    ``q_offset + i`` and sees key slots ``<=`` its own that are not padding. ``segment_ids``
    ``[batch, kv_len]`` (a packed row: ``k >= 1`` for the ``k``-th sample, 0 for padding; no
    cache, so ``q_len == kv_len``) further keeps each query to the keys of its own sample.
    """
    kv_len = attention_mask.shape[-1]
    q_slot = q_offset + jnp.arange(q_len)[:, None]
    causal = jnp.arange(kv_len)[None, :] <= q_slot  # [q, kv]
    mask = causal[None, None] & attention_mask.astype(bool)[:, None, None, :]
    if segment_ids is not None:
        if q_len != kv_len:
            raise ValueError(f"segment_ids (packed rows) need the whole row at once: q_len {q_len} != kv_len {kv_len}")
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    return mask


class AttentionMasks(NamedTuple):
    """What the decoder layers' attention reads: the dense causal + padding (+ packing) mask
    ``[b, 1, q_len, kv_len]`` (:func:`attention_mask_for`) and the segment ids ``[b, s]`` the
    splash kernel takes instead (a packed row's ``segment_ids``, else the 0/1 padding mask; the
    dense mask is then never computed)."""

    dense: jax.Array
    segments: jax.Array


# -- KV cache -------------------------------------------------------------------------------


@flax.struct.dataclass
class KVCache:
    """Static-size decoding cache.

    key, value: ``[layers, batch, max_len, kv_heads, head_dim]``; index: ``[]`` int32, the
    first slot the next call writes (prefill writes ``s`` slots, a decode step one).
    """

    key: jax.Array
    value: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
        dtype = cfg.dtype if dtype is None else dtype
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.key.shape[2]


# -- modules --------------------------------------------------------------------------------


class LlamaAttention(nnx.Module):
    """Grouped-query self-attention with rotary embedding; ``[b, s, embed] -> [b, s, embed]``."""

    def __init__(self, cfg: LlamaConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.attention = cfg.attention
        e, q_out, kv_out = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        proj = functools.partial(projection, lora=lora, use_bias=cfg.attention_bias, dtype=cfg.dtype,
                                 param_dtype=cfg.param_dtype, rngs=rngs)
        self.q_proj = proj("q_proj", e, q_out, axes=("embed", "heads"))
        self.k_proj = proj("k_proj", e, kv_out, axes=("embed", "kv"))
        self.v_proj = proj("v_proj", e, kv_out, axes=("embed", "kv"))
        self.o_proj = proj("o_proj", q_out, e, axes=("heads", "embed"), use_bias=cfg.attention_out_bias)

    def __call__(self, x, *, cos, sin, mask, kv_cache=None, cache_index=None):
        """x ``[b, s, embed]``; mask :class:`AttentionMasks`; kv_cache (k, v) ``[b, max_len, kv_heads, d]``.

        Returns the output and the updated (k, v) cache slices (None without a cache).
        """
        q = constrain(apply_rotary(split_heads(self.q_proj(x), self.num_heads), cos, sin), HEADS_ACT)
        k = constrain(apply_rotary(split_heads(self.k_proj(x), self.num_kv_heads), cos, sin), KV_ACT)
        v = constrain(split_heads(self.v_proj(x), self.num_kv_heads), KV_ACT)
        if kv_cache is not None:
            cache_k, cache_v = kv_cache
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            kv_cache = (k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        if self.attention == "splash" and kv_cache is None and splash_tiles(q.shape[1]):
            out = splash_attention(q, k, v, mask.segments)
        else:
            out = dot_product_attention(q, k, v, mask=mask.dense, implementation=self.attention)
        return self.o_proj(merge_heads(out)), kv_cache


class LlamaMLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: LlamaConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.intermediate_size
        proj = functools.partial(projection, lora=lora, use_bias=cfg.mlp_bias, dtype=cfg.dtype,
                                 param_dtype=cfg.param_dtype, rngs=rngs)
        self.gate_proj = proj("gate_proj", e, m, axes=("embed", "mlp"))
        self.up_proj = proj("up_proj", e, m, axes=("embed", "mlp"))
        self.down_proj = proj("down_proj", m, e, axes=("mlp", "embed"))

    def __call__(self, x):
        hidden = constrain(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x), MLP_ACT)
        return self.down_proj(hidden)


class LlamaDecoderLayer(nnx.Module):
    """Pre-norm block: ``h += attn(norm(h)); h += mlp(norm(h))``."""

    def __init__(self, cfg: LlamaConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        norm = functools.partial(RMSNorm, cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
        self.input_layernorm = norm()
        self.self_attn = LlamaAttention(cfg, lora, rngs=rngs)
        self.post_attention_layernorm = norm()
        self.mlp = LlamaMLP(cfg, lora, rngs=rngs)

    def __call__(self, h, *, cos, sin, mask, kv_cache=None, cache_index=None):
        attn, kv_cache = self.self_attn(self.input_layernorm(h), cos=cos, sin=sin, mask=mask,
                                        kv_cache=kv_cache, cache_index=cache_index)
        h = constrain(h + attn, HIDDEN_ACT)
        h = constrain(h + self.mlp(self.post_attention_layernorm(h)), HIDDEN_ACT)
        return h, kv_cache


def remat_policy(name: str):
    """The ``jax.checkpoint`` policy of a :data:`REMAT_POLICIES` name (``full``: save nothing)."""
    return {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots}[name]


class LlamaModel(nnx.Module):
    """Embedding, decoder layers (a list, or one stacked layer when scanned), final norm."""

    def __init__(self, cfg: LlamaConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.padded_vocab_size, cfg.hidden_size, param_dtype=cfg.param_dtype, rngs=rngs)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.num_hidden_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs):
                return LlamaDecoderLayer(cfg, lora, rngs=rngs)

            self.layers = stacked(rngs)
        else:
            self.layers = nnx.List([LlamaDecoderLayer(cfg, lora, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)

    def _layer_fn(self, *, cos, sin, mask, cache_index):
        """``(layer, h, kv) -> (h, kv)`` for one layer, rematerialised per the config."""

        def run(layer, h, kv):
            return layer(h, cos=cos, sin=sin, mask=mask, kv_cache=kv, cache_index=cache_index)

        if self.cfg.remat != "none":
            run = nnx.remat(run, policy=remat_policy(self.cfg.remat), prevent_cse=not self.cfg.scan_layers)
        return run

    def __call__(self, *, input_ids=None, inputs_embeds=None, attention_mask, position_ids, cache: KVCache | None = None,
                 segment_ids=None):
        """Returns the final-norm hidden states ``[b, s, embed]`` and the updated cache (or None)."""
        cfg = self.cfg
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids / inputs_embeds")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        h = constrain(h.astype(cfg.dtype), HIDDEN_ACT)
        seq = h.shape[1]
        cos, sin = rotary_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.dtype, cfg.mrope_section)
        cache_index = None if cache is None else cache.index
        if cache is not None and attention_mask.shape[-1] != cache.max_len:
            raise ValueError(f"with a cache, attention_mask must cover all {cache.max_len} slots, "
                             f"got {attention_mask.shape}")
        if cache is not None and segment_ids is not None:
            raise ValueError("segment_ids (packed rows) are for training forwards; decoding with a cache is unpacked")
        mask = AttentionMasks(attention_mask_for(attention_mask, 0 if cache is None else cache.index, seq, segment_ids),
                              attention_mask if segment_ids is None else segment_ids)
        run = self._layer_fn(cos=cos, sin=sin, mask=mask, cache_index=cache_index)
        kv = None if cache is None else (cache.key, cache.value)

        if cfg.scan_layers:
            scan = nnx.scan(run, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0),
                            transform_metadata={nnx.PARTITION_NAME: "layers"})
            h, kv = scan(self.layers, h, kv)
        else:
            new_kv = []
            for i, layer in enumerate(self.layers):
                h, kv_i = run(layer, h, None if kv is None else (kv[0][i], kv[1][i]))
                new_kv.append(kv_i)
            if kv is not None:
                kv = (jnp.stack([k for k, _ in new_kv]), jnp.stack([v for _, v in new_kv]))

        h = self.norm(h)
        if cache is not None:
            cache = KVCache(kv[0], kv[1], cache.index + seq)
        return h, cache


class LlamaForCausalLM(nnx.Module):
    """LLaMA decoder + LM head; I-LoRA targets (``lora.targets``) become :class:`ILoRALinear`."""

    def __init__(self, cfg: LlamaConfig, lora: ILoRAConfig | None = None, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = LlamaModel(cfg, lora, rngs=rngs)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            cfg.hidden_size, cfg.padded_vocab_size, use_bias=False, axes=("embed", "vocab"), dtype=cfg.dtype,
            param_dtype=cfg.param_dtype, rngs=rngs, kernel_init=normal_init(0.02))

    def __call__(self, *, input_ids=None, inputs_embeds=None, attention_mask, position_ids,
                 cache: KVCache | None = None, return_hidden: bool = False, segment_ids=None):
        """Next-token logits.

        Args:
          input_ids: ``[b, s]`` int, or inputs_embeds ``[b, s, embed]``.
          attention_mask: ``[b, s]`` 0/1 (left padding); with a cache ``[b, cache.max_len]``
            covering every cache slot (slots after the current chunk are masked by causality).
          position_ids: ``[b, s]`` (see :func:`position_ids_from_mask`; in a packed row they
            restart at 0 for every sample).
          cache: a :class:`KVCache`; this call writes slots ``cache.index .. cache.index+s-1``.
          segment_ids: ``[b, s]`` int, packed rows (several samples per row): ``k >= 1`` for
            the ``k``-th sample, 0 for padding; attention stays within a sample. None: one
            sample per row. Not with a cache.
        Returns:
          logits ``[b, s, vocab_size]`` float32 (padded vocabulary rows sliced off); with
          ``return_hidden`` also the hidden states after the final norm ``[b, s, embed]``;
          with a cache, the updated cache last.
        """
        hidden, cache_out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                       attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                                       segment_ids=segment_ids)
        if self.lm_head is None:
            table = self.model.embed_tokens.weight[...].astype(self.cfg.dtype)
            logits = jnp.einsum("bse,ve->bsv", hidden.astype(self.cfg.dtype), table)
        else:
            logits = self.lm_head(hidden)
        # Padded vocabulary rows are never valid predictions: drop them before anyone softmaxes.
        logits = constrain(logits[..., : self.cfg.vocab_size].astype(jnp.float32), LOGITS_ACT)
        out = (logits, hidden) if return_hidden else (logits,)
        if cache is not None:
            out = out + (cache_out,)
        return out[0] if len(out) == 1 else out
