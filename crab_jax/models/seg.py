"""Crab's segmentation branch: query generator + two-scale SAM-style mask decoder + losses.

Port of ``SegModule`` / ``MaskDecoderMultiScale`` / ``TwoWayTransformer`` / ``QueryGenerator``
(``models/multimodal_encoder.py``) and the mask losses (``models/loss.py``). Attribute names
mirror the torch state dict (``text_hidden_fcs.0.0``, ``mask_decoder.transformer.1.layers.0
.cross_attn_token_to_image.q_proj`` ...) so the converter table is a near-identity map.

Layouts: image maps are channels-last inside (``[batch, h, w, C]``); the public outputs are
channels-first like torch (``[batch, classes, H, W]``).

One compiled program serves a batch that mixes binary tasks (s4 / ms3 / ref-avs) and AVSS:
both classifier heads are evaluated for every sample and ``is_avss [batch]`` (a boolean array,
not Python task strings) picks, per sample, which head's level-0 logits gate level 1 and
which loss applies. Callers read ``binary_logits`` for binary samples and ``avss_logits``
for AVSS samples (the other head's output of a sample is a by-product, never used).

Behaviour of the original kept on purpose (see the fixture README, section 4):
  * the 1/3 (per-scale token average) and 1/2 (per-level sum) factors are constants;
  * every query-generator layer restarts from the learned queries, so only the last layer
    shapes the output;
  * two-way layer 0 replaces the queries by their self-attention (no residual, no PE);
  * level 1 gates its upsampled image map by ``sigmoid(mean_classes(level-0 logits)) + 1``;
  * only the first object's six prompt tokens and the first frame's 256 image tokens are used;
  * losses are summed over samples and weighted by the fraction of binary / AVSS samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.layers import (
    Embed,
    LayerNorm,
    Linear,
    attention,
    conv2d,
    fan_in_init,
    gelu_exact,
    merge_heads,
    normal_init,
    split_heads,
    zeros_init,
)
from crab_jax.parallel.sharding import buffer, param


@dataclasses.dataclass(frozen=True)
class SegConfig:
    """Sizes of the segmentation branch (real Crab values as defaults)."""

    d_model: int = 4096  # LLM hidden size (input width of ``text_hidden_fcs``)
    vit_dim: int = 1024  # CLIP width of the image taps
    prompt_embed_dim: int = 256  # C, the decoder width
    image_scale_nums: int = 2  # levels
    token_nums_per_scale: int = 3  # prompt tokens averaged per level
    depth: int = 2  # two-way transformer layers
    qg_layers: int = 2  # query generator layers
    avs_query_num: int = 300  # Q learned queries
    low_res_mask_size: int = 112
    image_size: int = 224
    patch_size: int = 14
    binary_classes: int = 1  # ``ms3_s4_classfier`` outputs
    avss_classes: int = 71  # ``avss_classifier`` outputs
    two_way_mlp_dim: int = 2048
    two_way_heads: int = 8
    attention_downsample_rate: int = 2
    query_generator_heads: int = 8
    query_generator_ffn: int = 2048
    pe_scale: float = 1.0  # PositionEmbeddingRandom scale of the gaussian matrices

    @property
    def image_embedding_size(self) -> int:
        """Side of the patch grid (16 for 224 px / 14 px patches)."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_object(self) -> int:
        return self.image_scale_nums * self.token_nums_per_scale

    @property
    def multiseg_scalar(self) -> float:
        return 1.0 / self.token_nums_per_scale

    @property
    def multiscale_scalar(self) -> float:
        return 1.0 / self.image_scale_nums

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SegConfig":
        """Builds from a config dict (e.g. the fixture manifest's); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "num_classes_ctor" in d:
            kw["binary_classes"] = d["num_classes_ctor"]
        cfg = cls(**kw)
        if "image_embedding_size" in d and d["image_embedding_size"] != cfg.image_embedding_size:
            raise ValueError(f"image_embedding_size {d['image_embedding_size']} != "
                             f"image_size // patch_size = {cfg.image_embedding_size}")
        return cfg


# ----------------------------------------------------------------------------------------
# Functional helpers
# ----------------------------------------------------------------------------------------


def _linear_taps(in_size: int, out_size: int):
    """Source indices and weights of torch's bilinear (align_corners=False) along one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64)
    # torch's CPU kernel evaluates scale·(dst+½)−½ as one fused multiply-add in float32
    # (a single rounding): the float64 product of the float32 scale is exact, then round once.
    src = np.maximum(np.float64(scale) * (dst + 0.5) - 0.5, 0.0).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def _resize_axis(x: jax.Array, out_size: int, axis: int) -> jax.Array:
    i0, i1, w0, w1 = _linear_taps(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w0 = jnp.asarray(w0, x.dtype).reshape(shape)
    w1 = jnp.asarray(w1, x.dtype).reshape(shape)
    return jnp.take(x, i0, axis=axis) * w0 + jnp.take(x, i1, axis=axis) * w1


def resize_bilinear(x: jax.Array, size: tuple[int, int], axes: tuple[int, int] = (1, 2)) -> jax.Array:
    """torch ``F.interpolate(mode='bilinear', align_corners=False, antialias=False)``.

    ``jax.image.resize`` antialiases when shrinking, so this gathers the two taps per axis
    explicitly; width first, then height, which is torch's CPU summation order.
    """
    h_axis, w_axis = axes
    x = _resize_axis(x, size[1], w_axis)
    return _resize_axis(x, size[0], h_axis)


# ----------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------


class Conv2d(nnx.Module):
    """Conv2d on ``[batch, h, w, in]`` with an HWIO ``weight`` ``[k, k, in, out]``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, *, padding: int = 0,
                 use_bias: bool = True, rngs: nnx.Rngs):
        self.padding = padding
        self.weight = param(fan_in_init, rngs.params(), (kernel, kernel, in_ch, out_ch),
                            ("conv", "conv", "channels", "channels"))
        self.bias = param(zeros_init, rngs.params(), (out_ch,), ("channels",)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv2d(x, self.weight[...], padding=self.padding)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class ConvTranspose2d(nnx.Module):
    """ConvTranspose2d with kernel == stride on ``[batch, h, w, in]`` → ``[batch, k·h, k·w, out]``.

    ``weight`` is ``[k, k, in, out]``. With kernel == stride the output patches do not
    overlap, so each input pixel writes one k×k block: one einsum plus a reshape.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 2, *, rngs: nnx.Rngs):
        self.kernel = kernel
        self.weight = param(fan_in_init, rngs.params(), (kernel, kernel, in_ch, out_ch),
                            ("conv", "conv", "channels", "channels"))
        self.bias = param(zeros_init, rngs.params(), (out_ch,), ("channels",))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        k = self.kernel
        y = jnp.einsum("bijc,uvco->biujvo", x, self.weight[...])
        return y.reshape(b, h * k, w * k, -1) + self.bias[...]


def _upscaler(in_ch: int, out_ch: int, rngs: nnx.Rngs) -> nnx.List:
    """torch ``Sequential(ConvTranspose2d(2, 2), LayerNorm2d, GELU)``; index 2 holds no weights."""
    return nnx.List([ConvTranspose2d(in_ch, out_ch, 2, rngs=rngs), LayerNorm(out_ch, eps=1e-6, rngs=rngs), None])


def _apply_upscaler(seq: nnx.List, x: jax.Array) -> jax.Array:
    return gelu_exact(seq[1](seq[0](x)))


class PositionEmbeddingRandom(nnx.Module):
    """SAM's random Fourier position encoding; the gaussian matrix is a torch buffer.

    For an h×w grid, pixel centres ``((col+.5)/w, (row+.5)/h)`` are mapped to [-1, 1],
    projected by ``positional_encoding_gaussian_matrix`` ``[2, C/2]`` (x row first), times 2π,
    and encoded as ``[sin, cos]`` → ``[h, w, C]``.
    """

    def __init__(self, num_pos_feats: int, *, scale: float = 1.0, rngs: nnx.Rngs):
        # Redrawn at construction, like the original: Crab's weight files do not carry it.
        value = scale * jax.random.normal(rngs.params(), (2, num_pos_feats), jnp.float32)
        self.positional_encoding_gaussian_matrix = buffer(value, (None, None))

    def __call__(self, h: int, w: int) -> jax.Array:
        """``[h, w, C]``."""
        y = (np.arange(h, dtype=np.float32) + np.float32(0.5)) / np.float32(h)
        x = (np.arange(w, dtype=np.float32) + np.float32(0.5)) / np.float32(w)
        coords = np.stack(np.broadcast_arrays(x[None, :], y[:, None]), axis=-1)  # [h, w, 2] (x, y)
        coords = jnp.asarray(2.0 * coords - 1.0, jnp.float32)
        proj = coords @ self.positional_encoding_gaussian_matrix[...]
        proj = np.float32(2 * np.pi) * proj
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Attention(nnx.Module):
    """SAM attention with q/k/v projected to ``C / downsample_rate`` (``internal_dim``)."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1, *, rngs: nnx.Rngs):
        internal = dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the internal width {internal}")
        self.num_heads = num_heads
        self.q_proj = Linear(dim, internal, axes=("embed", "heads"), rngs=rngs)
        self.k_proj = Linear(dim, internal, axes=("embed", "heads"), rngs=rngs)
        self.v_proj = Linear(dim, internal, axes=("embed", "heads"), rngs=rngs)
        self.out_proj = Linear(internal, dim, axes=("heads", "embed"), rngs=rngs)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """q ``[batch, n_q, C]``, k/v ``[batch, n_k, C]`` → ``[batch, n_q, C]``."""
        q = split_heads(self.q_proj(q), self.num_heads)
        k = split_heads(self.k_proj(k), self.num_heads)
        v = split_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(merge_heads(attention(q, k, v)))


class MultiheadAttention(nnx.Module):
    """torch ``nn.MultiheadAttention`` (batch_first) with the packed ``in_proj_weight``.

    ``in_proj_weight`` is kept packed, transposed to ``[C, 3C]`` (columns: query, key, value)
    and ``in_proj_bias`` ``[3C]``; the converter only transposes.
    """

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        self.dim, self.num_heads = dim, num_heads
        xavier = jax.nn.initializers.xavier_uniform()
        self.in_proj_weight = param(xavier, rngs.params(), (dim, 3 * dim), ("embed", "heads"))
        self.in_proj_bias = param(zeros_init, rngs.params(), (3 * dim,), ("heads",))
        self.out_proj = Linear(dim, dim, axes=("heads", "embed"), rngs=rngs)

    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
        """query ``[batch, n_q, C]``, key/value ``[batch, n_k, C]`` → ``[batch, n_q, C]``."""
        w = self.in_proj_weight[...].reshape(self.dim, 3, self.dim)
        b = self.in_proj_bias[...].reshape(3, self.dim)
        q = split_heads(query @ w[:, 0] + b[0], self.num_heads)
        k = split_heads(key @ w[:, 1] + b[1], self.num_heads)
        v = split_heads(value @ w[:, 2] + b[2], self.num_heads)
        return self.out_proj(merge_heads(attention(q, k, v)))


class MLPBlock(nnx.Module):
    """``lin2(relu(lin1(x)))`` (the two-way transformer's MLP)."""

    def __init__(self, dim: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.lin1 = Linear(dim, mlp_dim, axes=("embed", "mlp"), rngs=rngs)
        self.lin2 = Linear(mlp_dim, dim, axes=("mlp", "embed"), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(jax.nn.relu(self.lin1(x)))


class MLP(nnx.Module):
    """``layers.{i}`` with ReLU between (not after the last): Linear layers, or 1×1 Conv2d
    on ``[batch, h, w, in]`` when ``conv``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, *, rngs: nnx.Rngs,
                 conv: bool = False):
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        make = (lambda a, b: Conv2d(a, b, 1, rngs=rngs)) if conv else (
            lambda a, b: Linear(a, b, axes=("embed", "mlp"), rngs=rngs))
        self.layers = nnx.List([make(a, b) for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class TwoWayAttentionBlock(nnx.Module):
    """SAM two-way block: token self-attn, token→image, MLP, image→token (post-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, *,
                 skip_first_layer_pe: bool, rngs: nnx.Rngs):
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(dim, num_heads, rngs=rngs)
        self.norm1 = LayerNorm(dim, rngs=rngs)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate, rngs=rngs)
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.mlp = MLPBlock(dim, mlp_dim, rngs=rngs)
        self.norm3 = LayerNorm(dim, rngs=rngs)
        self.norm4 = LayerNorm(dim, rngs=rngs)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate, rngs=rngs)

    def __call__(self, queries, keys, query_pe, key_pe):
        """queries/query_pe ``[batch, Q, C]``, keys ``[batch, hw, C]``, key_pe ``[1|batch, hw, C]``."""
        if self.skip_first_layer_pe:
            # The original's layer 0 *replaces* the queries (no residual, no PE).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, *,
                 rngs: nnx.Rngs):
        self.layers = nnx.List([
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=(i == 0), rngs=rngs)
            for i in range(depth)
        ])
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate, rngs=rngs)
        self.norm_final_attn = LayerNorm(dim, rngs=rngs)

    def __call__(self, image: jax.Array, image_pe: jax.Array, point_embedding: jax.Array):
        """image ``[batch, hw, C]``, image_pe ``[1|batch, hw, C]``, point_embedding ``[batch, Q, C]``
        → (queries ``[batch, Q, C]``, keys ``[batch, hw, C]``)."""
        queries, keys = point_embedding, image
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class QueryGeneratorLayer(nnx.Module):
    """Post-norm self-attn → cross-attn to the prompt → FFN (Linear, exact GELU, Linear)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, rngs: nnx.Rngs):
        self.self_attn = MultiheadAttention(dim, num_heads, rngs=rngs)
        self.cross_attn = MultiheadAttention(dim, num_heads, rngs=rngs)
        self.ffn = nnx.List([
            Linear(dim, ffn_dim, axes=("embed", "mlp"), rngs=rngs),
            None,  # torch nn.GELU (no weights)
            Linear(ffn_dim, dim, axes=("mlp", "embed"), rngs=rngs),
        ])
        self.norm1 = LayerNorm(dim, rngs=rngs)
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.norm3 = LayerNorm(dim, rngs=rngs)

    def __call__(self, queries: jax.Array, memory: jax.Array) -> jax.Array:
        """queries ``[Q, C]`` (the learned queries, shared by the batch), memory ``[batch, m, C]``
        → ``[batch, Q, C]``."""
        q = queries[None]
        # The queries are the same for every sample: self-attention runs once, batch 1.
        q = self.norm1(q + self.self_attn(q, q, q))
        q = jnp.broadcast_to(q, (memory.shape[0],) + q.shape[1:])
        q = self.norm2(q + self.cross_attn(q, memory, memory))
        ffn = self.ffn[2](gelu_exact(self.ffn[0](q)))
        return self.norm3(q + ffn)


class QueryGenerator(nnx.Module):
    def __init__(self, num_layers: int, dim: int, num_heads: int, ffn_dim: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([QueryGeneratorLayer(dim, num_heads, ffn_dim, rngs=rngs) for _ in range(num_layers)])

    def __call__(self, queries: jax.Array, memory: jax.Array) -> jax.Array:
        """queries ``[Q, C]``, memory ``[batch, m, C]`` → ``[batch, Q, C]``.

        The original feeds the *learned* queries to every layer and keeps the last result, so
        the earlier layers cannot affect the output (they get no gradient in torch either):
        only the last layer is evaluated.
        """
        return self.layers[len(self.layers) - 1](queries, memory)


class MaskDecoderMultiScale(nnx.Module):
    def __init__(self, cfg: SegConfig, *, rngs: nnx.Rngs):
        c = cfg.prompt_embed_dim
        self.cfg = cfg
        self.transformer = nnx.List([
            TwoWayTransformer(cfg.depth, c, cfg.two_way_heads, cfg.two_way_mlp_dim,
                              cfg.attention_downsample_rate, rngs=rngs)
            for _ in range(cfg.image_scale_nums)
        ])
        self.avs_query_tokens = Embed(cfg.avs_query_num, c, axes=("queries", "embed"), rngs=rngs,
                                      init=normal_init(1.0))
        self.query_generator = QueryGenerator(cfg.qg_layers, c, cfg.query_generator_heads,
                                              cfg.query_generator_ffn, rngs=rngs)
        self.hyper_mlp_out = MLP(cfg.avs_query_num, c, c // 8, 3, rngs=rngs, conv=True)
        self.hyper_mlp = MLP(c, c, c // 8, 3, rngs=rngs)
        self.output_upscaling = _upscaler(c, c // 8, rngs)
        self.upsample_2x = _upscaler(c, c, rngs)
        self.pe1 = PositionEmbeddingRandom(c // 2, scale=cfg.pe_scale, rngs=rngs)
        self.level_embed = Embed(cfg.image_scale_nums, c, axes=(None, "embed"), rngs=rngs, init=normal_init(1.0))
        self.ms3_s4_classfier = Conv2d(c // 8, cfg.binary_classes, 1, use_bias=False, rngs=rngs)
        self.avss_classifier = Conv2d(c // 8, cfg.avss_classes, 1, use_bias=False, rngs=rngs)

    def __call__(self, level: int, image_embeddings: jax.Array, image_pe: jax.Array,
                 sparse_prompt: jax.Array, dense_prompt: jax.Array, previous_mask: jax.Array | None):
        """One level of the decoder.

        Args:
          level: static level index.
          image_embeddings: ``[batch, h, w, C]`` neck output of this level.
          image_pe: ``[h, w, C]`` (level 0; later levels use ``pe1`` at the upsampled size).
          sparse_prompt: ``[batch, 1, C]`` the level's prompt token.
          dense_prompt: ``[batch, h, w, C]``.
          previous_mask: ``[batch, 2h, 2w]`` class-mean of the previous level's logits (level > 0).
        Returns:
          (binary ``[batch, H, W, binary_classes]``, avss ``[batch, H, W, avss_classes]``,
          query generator output ``[batch, Q, C]``) with ``H, W`` = 2× the map size.
        """
        queries = self.query_generator(self.avs_query_tokens.weight[...], sparse_prompt)
        tokens = queries + self.level_embed.weight[...][level]

        src = image_embeddings
        if level > 0:
            src = _apply_upscaler(self.upsample_2x, src)
            b, h, w, _ = src.shape
            src = (jax.nn.sigmoid(previous_mask)[..., None] + 1.0) * src
            image_pe = self.pe1(h, w)
            dense_prompt = resize_bilinear(dense_prompt, (h, w))
        src = src + dense_prompt
        b, h, w, c = src.shape

        hs, keys = self.transformer[level](src.reshape(b, h * w, c), image_pe.reshape(1, h * w, c), tokens)
        hyper = self.hyper_mlp(hs[:, : self.cfg.avs_query_num])  # [b, Q, C/8]
        upscaled = _apply_upscaler(self.output_upscaling, keys.reshape(b, h, w, c))  # [b, 2h, 2w, C/8]
        masks = jnp.einsum("bqc,bhwc->bhwq", hyper, upscaled)  # per-query maps, Q as channels
        masks = self.hyper_mlp_out(masks)  # [b, 2h, 2w, C/8]
        return self.ms3_s4_classfier(masks), self.avss_classifier(masks), queries


class SegOutput(NamedTuple):
    """``binary_logits`` ``[batch, binary_classes, S, S]`` (read for s4 / ms3 / ref-avs samples),
    ``avss_logits`` ``[batch, avss_classes, S, S]`` (read for AVSS samples), ``S = image_size``;
    ``intermediates``: debugging tensors (None unless asked)."""

    binary_logits: jax.Array
    avss_logits: jax.Array
    intermediates: dict | None


class SegModule(nnx.Module):
    """Crab's ``SegModule`` (see the module docstring)."""

    def __init__(self, cfg: SegConfig, *, rngs: nnx.Rngs):
        c = cfg.prompt_embed_dim
        self.cfg = cfg
        self.text_hidden_fcs = nnx.List([nnx.List([
            Linear(cfg.d_model, cfg.d_model, axes=("embed", "mlp"), rngs=rngs),
            None,  # ReLU
            Linear(cfg.d_model, c, axes=("mlp", None), rngs=rngs),
        ])])
        self.no_mask_embed = Embed(1, c, axes=(None, "embed"), rngs=rngs, init=normal_init(1.0))
        self.image_feature_neck = nnx.List([
            Conv2d(cfg.vit_dim, c, 1, use_bias=False, rngs=rngs),
            LayerNorm(c, eps=1e-6, rngs=rngs),  # LayerNorm2d: over channels, per pixel
            Conv2d(c, c, 3, padding=1, use_bias=False, rngs=rngs),
            LayerNorm(c, eps=1e-6, rngs=rngs),
        ])
        self.pe_layer = PositionEmbeddingRandom(c // 2, scale=cfg.pe_scale, rngs=rngs)
        self.mask_decoder = MaskDecoderMultiScale(cfg, rngs=rngs)

    def prompt_tokens(self, pred_embeddings: jax.Array) -> jax.Array:
        """``[batch, n, d_model]`` → per-level prompt ``[batch, levels, C]`` (first object only)."""
        cfg = self.cfg
        fcs = self.text_hidden_fcs[0]
        x = pred_embeddings[:, : cfg.tokens_per_object]
        x = fcs[2](jax.nn.relu(fcs[0](x)))
        x = x.reshape(x.shape[0], cfg.image_scale_nums, cfg.token_nums_per_scale, x.shape[-1])
        scalar = np.float32(cfg.multiseg_scalar)
        fused = jnp.zeros_like(x[:, :, 0])
        for i in range(cfg.token_nums_per_scale):  # same summation order as the original
            fused = fused + scalar * x[:, :, i]
        return fused

    def neck(self, image_features: jax.Array) -> jax.Array:
        """``[batch, n >= s·s, W]`` raw CLIP tokens (first frame = first s·s) → ``[batch, s, s, C]``."""
        s = self.cfg.image_embedding_size
        x = image_features[:, : s * s].reshape(image_features.shape[0], s, s, -1)
        n = self.image_feature_neck
        return n[3](n[2](n[1](n[0](x))))

    def __call__(self, pred_embeddings: jax.Array, image_features: Sequence[jax.Array], is_avss: jax.Array,
                 *, return_intermediates: bool = False) -> SegOutput:
        """Mask logits for every sample.

        Args:
          pred_embeddings: ``[batch, n, d_model]`` hidden states at the mask positions
            (the first ``levels · tokens_per_scale`` are used).
          image_features: one ``[batch, n, vit_dim]`` array per level (raw CLIP patch tokens;
            only the first ``s·s`` tokens, the first frame, are used).
          is_avss: ``[batch]`` bool, True where the sample is an AVSS (multi-class) task.
          return_intermediates: static; also return per-level debugging tensors.
        Returns:
          :class:`SegOutput`.
        """
        cfg = self.cfg
        if len(image_features) != cfg.image_scale_nums:
            raise ValueError(f"expected {cfg.image_scale_nums} image feature levels, got {len(image_features)}")
        s = cfg.image_embedding_size
        prompts = self.prompt_tokens(pred_embeddings)  # [b, L, C]
        b, _, c = prompts.shape
        dense = jnp.broadcast_to(self.no_mask_embed.weight[...][0], (b, s, s, c))
        dense_pe = self.pe_layer(s, s)
        low = (cfg.low_res_mask_size, cfg.low_res_mask_size)
        scalar = np.float32(cfg.multiscale_scalar)

        necks, queries, dec_bin, dec_avss = [], [], [], []
        low_bin = low_avss = 0.0
        previous = None
        for level in range(cfg.image_scale_nums):
            neck = self.neck(image_features[level])
            binary, avss, q = self.mask_decoder(level, neck, dense_pe, prompts[:, level : level + 1],
                                                dense, previous)
            # Gate of the next level: the class mean of the head this sample uses.
            previous = jnp.where(is_avss[:, None, None], avss.mean(-1), binary.mean(-1))
            low_bin = low_bin + scalar * resize_bilinear(binary, low)
            low_avss = low_avss + scalar * resize_bilinear(avss, low)
            necks.append(neck)
            queries.append(q)
            dec_bin.append(binary)
            dec_avss.append(avss)

        out = (cfg.image_size, cfg.image_size)
        to_nchw = lambda x: jnp.transpose(x, (0, 3, 1, 2))
        binary_logits = to_nchw(resize_bilinear(low_bin, out))
        avss_logits = to_nchw(resize_bilinear(low_avss, out))
        inter = None
        if return_intermediates:
            inter = {
                "neck_out": jnp.transpose(jnp.stack(necks, 1), (0, 1, 4, 2, 3)),  # [b, L, C, s, s]
                "query_generator_out": jnp.stack(queries, 1),  # [b, L, Q, C]
                "decoder_binary": tuple(to_nchw(x) for x in dec_bin),  # [b, nb, h_l, w_l]
                "decoder_avss": tuple(to_nchw(x) for x in dec_avss),  # [b, K, h_l, w_l]
            }
        return SegOutput(binary_logits, avss_logits, inter)


# ----------------------------------------------------------------------------------------
# Losses (models/loss.py + SegModule.forward)
# ----------------------------------------------------------------------------------------


def mask_loss_terms(binary_logits: jax.Array, avss_logits: jax.Array, gt_mask: jax.Array,
                    is_avss: jax.Array, is_seg: jax.Array, *, dice_scale: float = 1000.0,
                    eps: float = 1e-6) -> jax.Array:
    """Per-sample ``(BCE, dice, CE)`` → ``[batch, 3]``; a term is 0 where it does not apply.

    Args:
      binary_logits: ``[batch, 1, H, W]``.
      avss_logits: ``[batch, K, H, W]``.
      gt_mask: ``[batch, 1, H, W]`` float: {0, 1} for binary tasks, class indices for AVSS.
      is_avss, is_seg: ``[batch]`` bool; samples with ``is_seg`` False count nowhere.
    """
    if binary_logits.shape[1] != 1:
        raise ValueError("the binary losses need a single-class binary head")
    num_masks = 1 + 1e-8  # the original divides by (num_masks + 1e-8) with one mask per sample
    x = binary_logits[:, 0].astype(jnp.float32)
    g = gt_mask[:, 0].astype(jnp.float32)
    bce = jnp.maximum(x, 0.0) - x * g + jnp.log1p(jnp.exp(-jnp.abs(x)))
    bce = bce.mean((1, 2)) / num_masks

    p = jax.nn.sigmoid(x) / dice_scale
    numerator = 2.0 * (p * g).sum((1, 2))
    denominator = p.sum((1, 2)) + (g / dice_scale).sum((1, 2))
    dice = (1.0 - (numerator + eps) / (denominator + eps)) / num_masks

    num_classes = avss_logits.shape[1]
    labels = jnp.clip(g.astype(jnp.int32), 0, num_classes - 1)  # torch .long() truncates
    logp = jax.nn.log_softmax(avss_logits.astype(jnp.float32), axis=1)
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0].mean((1, 2))

    is_bin = is_seg & ~is_avss
    is_av = is_seg & is_avss
    return jnp.stack([jnp.where(is_bin, bce, 0.0), jnp.where(is_bin, dice, 0.0), jnp.where(is_av, ce, 0.0)], -1)


def mask_loss(binary_logits: jax.Array, avss_logits: jax.Array, gt_mask: jax.Array, is_avss: jax.Array,
              is_seg: jax.Array, *, bce_weight: float = 1.0, dice_weight: float = 0.5,
              avss_ce_weight: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Crab's segmentation loss → (scalar loss, per-sample terms ``[batch, 3]``).

    Terms are summed over samples; the binary part (``bce_weight·ΣBCE + dice_weight·Σdice``)
    is multiplied by ``n_bin / (n_bin + n_avss)`` and the AVSS part by
    ``n_avss / (n_bin + n_avss)``. The weights 1 and ½ are fixed in the original's forward
    (its constructor's loss weights are ignored). No segmentation sample → 0.
    """
    terms = mask_loss_terms(binary_logits, avss_logits, gt_mask, is_avss, is_seg)
    n_bin = jnp.sum(is_seg & ~is_avss).astype(jnp.float32)
    n_av = jnp.sum(is_seg & is_avss).astype(jnp.float32)
    total = jnp.maximum(n_bin + n_av, 1.0)
    sums = terms.sum(0)
    loss = (bce_weight * sums[0] * (n_bin / total) + dice_weight * sums[1] * (n_bin / total)
            + avss_ce_weight * sums[2] * (n_av / total))
    return loss, terms
