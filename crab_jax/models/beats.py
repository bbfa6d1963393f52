"""BEATs audio encoder (Crab's frozen audio tower), Flax NNX.

Input is the normalised Kaldi filterbank (``crab_jax.data.media.fbank``), one image per
segment::

    fbank [n, frames, mel]
      -> patch_embedding (mel-by-time 16x16 patches, stride 16)   [n, (frames//16)*(mel//16), E]
      -> layer_norm -> post_extract_proj                          [n, T, C]
      -> encoder: x + GELU(pos_conv(x)) -> layer_norm              (post-norm variant)
      -> encoder.layers[l]: deep-norm post-LN transformer layers with a gated relative
         position bias                                              [n, T, C]

Tokens are time-major (``token = time_patch * (mel // 16) + freq_patch``); trailing frames
that do not fill a patch are dropped. The relative position table lives in layer 0 and is
shared by every layer (as in the original, where the other layers alias it); the bias is
computed once per forward from a static ``T`` and gated per layer, head and query.

Module attribute names follow the torch state dict (``encoder.layers.3.self_attn.q_proj``,
``encoder.pos_conv.0.weight_g`` ...), so ``crab_jax/families/crab/convert/beats_table.py`` is a near
identity. Only inference is implemented: BEATs is frozen in Crab and runs in eval mode
(dropouts and layer drop inactive).

Zero-padded fbanks (a batch mixing audio lengths) are encoded exactly as the unpadded ones
when ``valid_frames`` is given, as the original's ``padding_mask``: padded tokens are zeroed
before the conv position embedding (the unpadded sequence sees its zero padding there) and
are never attended as keys. The relative position bias depends only on distances, and every
other step is per token, so the real tokens' outputs do not depend on the padding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.attention import ProjectedAttention
from crab_jax.models.layers import (Conv2d, LayerNorm, Linear, gelu_exact, gelu_tanh, normal_init, ones_init,
                                     zeros_init)
from crab_jax.parallel.sharding import param

# BEATs' (fairseq) activation names.
_ACTIVATIONS = {
    "gelu": gelu_exact,
    "relu": jax.nn.relu,
    "gelu_fast": gelu_tanh,
    "gelu_accurate": gelu_tanh,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class BeatsConfig:
    """The fields of the original ``BEATsConfig`` (defaults are the original's)."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527
    layer_norm_eps: float = 1e-5  # torch LayerNorm default; not a checkpoint field

    # Sizes that define the parameter shapes: a checkpoint cfg must state them.
    REQUIRED = (
        "input_patch_size", "embed_dim", "encoder_layers", "encoder_embed_dim",
        "encoder_ffn_embed_dim", "encoder_attention_heads", "conv_pos", "conv_pos_groups",
    )

    def __post_init__(self):
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(f"BEATs activation_fn {self.activation_fn!r} is not supported; "
                             f"supported: {sorted(_ACTIVATIONS)}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"encoder_attention_heads {self.encoder_attention_heads}")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"conv_pos_groups {self.conv_pos_groups}")
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("BEATs: deep_norm and layer_norm_first are mutually exclusive")

    @classmethod
    def from_checkpoint_cfg(cls, cfg: Mapping[str, Any]) -> "BeatsConfig":
        """From the ``cfg`` dict stored in BEATs ``.pt`` checkpoints.

        Keys this port does not use (tokenizer settings, training options) are ignored;
        a missing shape-defining key raises ``ValueError`` naming it.
        """
        missing = [k for k in cls.REQUIRED if k not in cfg]
        if missing:
            raise ValueError(f"BEATs checkpoint cfg lacks required key(s) {missing}; "
                             f"it has {sorted(cfg)}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    @property
    def deep_norm_alpha(self) -> float:
        """Residual scale of deep norm, (2 * layers) ** (1/4); 1 without it."""
        return math.pow(2 * self.encoder_layers, 0.25) if self.deep_norm else 1.0

    def num_tokens(self, frames: int, mel_bins: int = 128) -> int:
        p = self.input_patch_size
        return (frames // p) * (mel_bins // p)


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> jax.Array:
    """Bidirectional T5-style buckets of ``key - query``, ``[q_len, k_len]`` int32.

    Half the buckets per direction; the first ``half/2`` distances are exact, larger ones
    logarithmic up to ``max_distance``. The log is taken in float32 like the original.
    """
    rel = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]
    half = num_buckets // 2
    max_exact = half // 2
    direction = jnp.where(rel > 0, half, 0)
    dist = jnp.abs(rel)
    ratio = jnp.maximum(dist, 1).astype(jnp.float32) / jnp.float32(max_exact)
    log_part = jnp.log(ratio) / jnp.float32(math.log(max_distance / max_exact)) * jnp.float32(half - max_exact)
    large = jnp.minimum(max_exact + log_part.astype(jnp.int32), half - 1)
    return (direction + jnp.where(dist < max_exact, dist, large)).astype(jnp.int32)


class WeightNormConv1d(nnx.Module):
    """Grouped Conv1d with torch ``weight_norm(dim=2)`` parameters, JAX ``[k, in/g, out]``.

    ``weight = weight_g * weight_v / ||weight_v||`` per kernel step (norm over the channel
    axes), recomputed every call so ``weight_g`` / ``weight_v`` stay the checkpoint's
    tensors. Padding ``k // 2`` on both sides; an even kernel's extra last step is dropped
    (the original's ``SamePad``), so the output has the input's length.
    """

    def __init__(self, dim: int, kernel: int, groups: int, *, param_dtype, rngs: nnx.Rngs):
        self.kernel, self.groups = kernel, groups
        std = math.sqrt(4.0 / (kernel * dim))
        self.weight_v = param(normal_init(std), rngs.params(), (kernel, dim // groups, dim),
                              ("conv", None, "embed"), param_dtype)
        v = self.weight_v[...]
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))  # torch init: g = ||v||
        self.weight_g = param(lambda key, shape, dtype: norm.astype(dtype), rngs.params(),
                              (kernel, 1, 1), ("conv", None, None), param_dtype)
        self.bias = param(zeros_init, rngs.params(), (dim,), ("embed",), param_dtype)

    def weight(self) -> jax.Array:
        v = self.weight_v[...].astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))
        return self.weight_g[...].astype(jnp.float32) * v / norm

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[n, T, C] -> [n, T, C]``."""
        pad = self.kernel // 2
        y = jax.lax.conv_general_dilated(
            x, self.weight().astype(x.dtype), window_strides=(1,), padding=((pad, pad),),
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=self.groups)
        y = y + self.bias[...].astype(y.dtype)
        if self.kernel % 2 == 0:
            y = y[:, :-1]
        return y


class RelativePositionTable(nnx.Module):
    """``weight`` ``[num_buckets, heads]`` (torch ``nn.Embedding``)."""

    def __init__(self, num_buckets: int, heads: int, *, param_dtype, rngs: nnx.Rngs):
        self.weight = param(normal_init(0.02), rngs.params(), (num_buckets, heads),
                            ("positions", None), param_dtype)

    def bias(self, q_len: int, k_len: int, num_buckets: int, max_distance: int) -> jax.Array:
        """``[heads, q_len, k_len]`` float32 bias (before gating)."""
        buckets = relative_position_buckets(q_len, k_len, num_buckets, max_distance)
        return jnp.take(self.weight[...].astype(jnp.float32), buckets, axis=0).transpose(2, 0, 1)


class BeatsSelfAttention(ProjectedAttention):
    """Multi-head self-attention with BEATs' gated relative position bias.

    The q/k/v/out projections and the attention are :class:`ProjectedAttention`'s; the gated
    bias enters as its additive ``bias``. Gate of head ``h``, query ``i`` from that head's
    unscaled query ``q`` (size d)::

        u = grep_linear(q)                        # [8]
        a, b = sigmoid(sum(u[:4])), sigmoid(sum(u[4:]))
        gate = a * (b * grep_a[h] - 1) + 2        # scales bias[h, i, :]
    """

    def __init__(self, cfg: BeatsConfig, *, owns_position_table: bool, dtype, param_dtype, rngs: nnx.Rngs):
        c, h = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        super().__init__(c, h, kv_axis="heads", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gru_rel_pos = cfg.gru_rel_pos and cfg.relative_position_embedding
        if cfg.gru_rel_pos:
            self.grep_linear = Linear(cfg.head_dim, 8, axes=(None, None), dtype=dtype, param_dtype=param_dtype,
                                      rngs=rngs)
            self.grep_a = param(ones_init, rngs.params(), (1, h, 1, 1), (None, None, None, None), param_dtype)
        if cfg.relative_position_embedding and owns_position_table:
            self.relative_attention_bias = RelativePositionTable(cfg.num_buckets, h, param_dtype=param_dtype, rngs=rngs)

    def gate(self, q: jax.Array) -> jax.Array:
        """``q`` ``[n, T, H, d]`` (unscaled) -> gates ``[n, H, T, 1]`` float32."""
        u = self.grep_linear(q.astype(jnp.float32)).astype(jnp.float32)  # [n, T, H, 8]
        u = u.reshape(*u.shape[:-1], 2, 4).sum(-1)
        gate_a, gate_b = jax.nn.sigmoid(u[..., 0]), jax.nn.sigmoid(u[..., 1])  # [n, T, H]
        grep_a = self.grep_a[...].astype(jnp.float32).reshape(self.num_heads)
        g = gate_a * (gate_b * grep_a - 1.0) + 2.0
        return g.transpose(0, 2, 1)[..., None]

    def __call__(self, x: jax.Array, position_bias: jax.Array | None, key_mask: jax.Array | None = None) -> jax.Array:
        """``x`` ``[n, T, C]``, ``position_bias`` ``[H, T, T]`` or None, ``key_mask`` ``[n, T]`` bool
        (tokens that may be attended; None: all) -> ``[n, T, C]``."""
        q, k, v = self.heads(x, x, x)
        bias = None
        if position_bias is not None:
            bias = position_bias[None]
            if self.gru_rel_pos:
                bias = self.gate(q) * bias  # [n, H, T, T]
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return self.attend(q, k, v, mask=mask, bias=bias)


class BeatsEncoderLayer(nnx.Module):
    """Transformer layer: post-norm with deep-norm residual scale, or pre-norm."""

    def __init__(self, cfg: BeatsConfig, *, owns_position_table: bool, dtype, param_dtype, rngs: nnx.Rngs):
        c = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = cfg.deep_norm_alpha
        self.activation = _ACTIVATIONS[cfg.activation_fn]
        self.self_attn = BeatsSelfAttention(cfg, owns_position_table=owns_position_table, dtype=dtype,
                                            param_dtype=param_dtype, rngs=rngs)
        norm = dict(eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(c, **norm)
        self.fc1 = Linear(c, cfg.encoder_ffn_embed_dim, axes=("embed", "mlp"), dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Linear(cfg.encoder_ffn_embed_dim, c, axes=("mlp", "embed"), dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
        self.final_layer_norm = LayerNorm(c, **norm)

    def __call__(self, x: jax.Array, position_bias: jax.Array | None, key_mask: jax.Array | None = None) -> jax.Array:
        """``[n, T, C] -> [n, T, C]`` (``key_mask [n, T]``: see :class:`BeatsSelfAttention`)."""
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias, key_mask)
            return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(self.alpha * x + self.self_attn(x, position_bias, key_mask))
        return self.final_layer_norm(self.alpha * x + self.fc2(self.activation(self.fc1(x))))


class BeatsEncoder(nnx.Module):
    """Conv position embedding + transformer layers (``encoder.*`` in the state dict)."""

    def __init__(self, cfg: BeatsConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        c = cfg.encoder_embed_dim
        self.pos_conv = nnx.List([WeightNormConv1d(c, cfg.conv_pos, cfg.conv_pos_groups,
                                                   param_dtype=param_dtype, rngs=rngs)])
        self.layers = nnx.List([
            BeatsEncoderLayer(cfg, owns_position_table=(i == 0), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for i in range(cfg.encoder_layers)
        ])
        self.layer_norm = LayerNorm(c, eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def position_bias(self, num_tokens: int) -> jax.Array | None:
        """``[H, T, T]`` shared relative position bias (None without relative positions)."""
        if not self.cfg.relative_position_embedding:
            return None
        table = self.layers[0].self_attn.relative_attention_bias
        return table.bias(num_tokens, num_tokens, self.cfg.num_buckets, self.cfg.max_distance)

    def __call__(self, x: jax.Array, *, token_mask: jax.Array | None = None, return_layer_outputs: bool = False):
        """``[n, T, C] -> [n, T, C]`` (and each layer's output); ``token_mask [n, T]`` bool marks
        the real tokens (None: all), the others are zeroed and never attended."""
        if token_mask is not None:
            x = jnp.where(token_mask[..., None], x, 0)
        x = x + gelu_exact(self.pos_conv[0](x))
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        position_bias = self.position_bias(x.shape[1])
        outputs = []
        for layer in self.layers:
            x = layer(x, position_bias, token_mask)
            outputs.append(x)
        if self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        return (x, outputs) if return_layer_outputs else x


class Beats(nnx.Module):
    """BEATs encoder. Parameters mirror the torch state dict (``predictor`` is kept, unused).

    Call with a normalised filterbank ``[n, frames, mel]`` -> ``[n, T, C]`` with
    ``T = (frames // p) * (mel // p)``, or ``[b, t, frames, mel]`` -> ``[b, t, T, C]`` (each
    of the ``b * t`` segments is encoded on its own).
    """

    def __init__(self, cfg: BeatsConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        e, c = cfg.embed_dim, cfg.encoder_embed_dim
        # One-channel square conv, stride = kernel (the fbank is a one-channel image, H = time, W = mel).
        p = cfg.input_patch_size
        self.patch_embedding = Conv2d(1, e, p, stride=p, use_bias=cfg.conv_bias,
                                      axes=("conv", "conv", None, "channels"), param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(e, eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
        # The original only builds the projection when the two widths differ.
        self.post_extract_proj = (
            Linear(e, c, axes=("channels", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            if e != c else None
        )
        self.encoder = BeatsEncoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.predictor = (
            Linear(c, cfg.predictor_class, axes=("embed", None), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            if cfg.finetuned_model else None
        )

    def token_mask(self, valid_frames: jax.Array, frames: int, mel_bins: int) -> jax.Array:
        """``valid_frames [...]`` (real fbank frames of each segment) -> ``[..., T]`` bool of the
        real tokens: the time patches inside the real frames, every frequency patch of them.
        ``0`` means an unused segment slot: all its (zero) tokens count, as without a mask."""
        p = self.cfg.input_patch_size
        valid = jnp.asarray(valid_frames, jnp.int32)
        valid = jnp.where(valid > 0, valid, frames) // p
        time_patch = jnp.arange(self.cfg.num_tokens(frames, mel_bins)) // (mel_bins // p)
        return time_patch < valid[..., None]

    def __call__(self, fbank: jax.Array, *, valid_frames: jax.Array | None = None,
                 return_layer_outputs: bool = False):
        """Encodes filterbanks.

        Args:
          fbank: ``[n, frames, mel]`` or ``[b, t, frames, mel]``.
          valid_frames: ``[n]`` / ``[b, t]`` int, real frames of each segment (the rest is zero
            padding, ignored exactly; 0: an unused slot). None: every frame is real.
          return_layer_outputs: also return every layer's output (same leading shape).
        Returns:
          ``[n, T, C]`` / ``[b, t, T, C]`` features, or ``(features, [layer outputs])``.
        """
        if fbank.ndim not in (3, 4):
            raise ValueError(f"BEATs expects [n, frames, mel] or [b, t, frames, mel], got shape {fbank.shape}")
        lead = fbank.shape[:-2]
        x = fbank.reshape(-1, *fbank.shape[-2:]).astype(self.dtype)
        patches = self.patch_embedding(x[..., None])  # [n, frames//p, mel//p, E]
        n, t, f, e = patches.shape
        x = self.layer_norm(patches.reshape(n, t * f, e))  # time-major tokens
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        mask = None
        if valid_frames is not None:
            mask = self.token_mask(valid_frames, fbank.shape[-2], fbank.shape[-1]).reshape(n, t * f)
        x, outputs = self.encoder(x, token_mask=mask, return_layer_outputs=True)
        unflat = lambda y: y.reshape(*lead, *y.shape[1:])
        if return_layer_outputs:
            return unflat(x), [unflat(y) for y in outputs]
        return unflat(x)
