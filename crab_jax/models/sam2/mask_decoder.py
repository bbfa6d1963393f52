"""SAM 2's mask decoder: two-way transformer, high-res upscaling, hypernetwork masks, IoU and
object-score heads, and the single-mask choice by stability.

Parameter paths are HF ``Sam2MaskDecoder``'s. Maps are channels-last: the image embedding is
``[b, h, w, C]``, the high-res features ``[b, 4h, 4w, C/8]`` (``conv_s0`` output) and
``[b, 2h, 2w, C/4]`` (``conv_s1``); masks come out ``[b, M, 4h, 4w]``.

Static prompt slots: the sparse tokens are a fixed number of slots with a validity mask
``[b, T]``. Invalid slots are excluded as attention *keys* (token self-attention and
image -> token attention); as queries they only update themselves, so the outputs equal those
of SAM 2 run on the valid tokens alone (the original predictor's variable-length prompt).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.attention import dot_product_attention, merge_heads, split_heads
from crab_jax.models.layers import Conv2d, Embed, LayerNorm, Linear, gelu_exact, normal_init
from crab_jax.models.sam2.config import MaskDecoderConfig
from crab_jax.models.sam2.hiera import FeedForward
from crab_jax.models.seg.blocks import ConvTranspose2d


class Attention(nnx.Module):
    """HF ``Sam2Attention``: ``q/k/v_proj`` to ``C / downsample_rate``, heads, ``o_proj`` back."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int, *, rngs: nnx.Rngs):
        internal = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = Linear(dim, internal, axes=("embed", "heads"), rngs=rngs)
        self.k_proj = Linear(dim, internal, axes=("embed", "heads"), rngs=rngs)
        self.v_proj = Linear(dim, internal, axes=("embed", "heads"), rngs=rngs)
        self.o_proj = Linear(internal, dim, axes=("heads", "embed"), rngs=rngs)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array | None = None) -> jax.Array:
        """``q [b, q_len, C]``, ``k, v [b, kv_len, C]``, ``key_valid [b, kv_len]`` bool -> ``[b, q_len, C]``."""
        h = self.num_heads
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = dot_product_attention(split_heads(self.q_proj(q), h), split_heads(self.k_proj(k), h),
                                    split_heads(self.v_proj(v), h), mask=mask)
        return self.o_proj(merge_heads(out))


class TwoWayAttentionBlock(nnx.Module):
    """Token self-attention, token -> image, MLP, image -> token; post-norm (HF names)."""

    def __init__(self, cfg: MaskDecoderConfig, *, skip_first_layer_pe: bool, rngs: nnx.Rngs):
        c, heads, rate = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_downsample_rate
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(c, heads, 1, rngs=rngs)
        self.layer_norm1 = LayerNorm(c, rngs=rngs)
        self.cross_attn_token_to_image = Attention(c, heads, rate, rngs=rngs)
        self.layer_norm2 = LayerNorm(c, rngs=rngs)
        self.mlp = FeedForward(c, cfg.mlp_dim, c, 2, rngs=rngs)
        self.layer_norm3 = LayerNorm(c, rngs=rngs)
        self.layer_norm4 = LayerNorm(c, rngs=rngs)
        self.cross_attn_image_to_token = Attention(c, heads, rate, rngs=rngs)

    def __call__(self, queries, keys, query_pe, key_pe, token_valid):
        """queries / query_pe ``[b, T, C]``, keys ``[b, hw, C]``, key_pe ``[1|b, hw, C]``, token_valid ``[b, T]``."""
        if self.skip_first_layer_pe:
            # Layer 0 replaces the queries (no residual, no PE), as the original.
            queries = self.self_attn(queries, queries, queries, token_valid)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_valid)
        queries = self.layer_norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.layer_norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.layer_norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.layer_norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_valid))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs):
        c = cfg.hidden_size
        self.layers = nnx.List([TwoWayAttentionBlock(cfg, skip_first_layer_pe=(i == 0), rngs=rngs)
                                for i in range(cfg.num_hidden_layers)])
        self.final_attn_token_to_image = Attention(c, cfg.num_attention_heads, cfg.attention_downsample_rate,
                                                   rngs=rngs)
        self.layer_norm_final_attn = LayerNorm(c, rngs=rngs)

    def __call__(self, tokens, image, image_pe, token_valid):
        """tokens ``[b, T, C]`` (also their PE), image ``[b, hw, C]``, image_pe ``[1|b, hw, C]``,
        token_valid ``[b, T]`` -> (tokens ``[b, T, C]``, image ``[b, hw, C]``)."""
        queries, keys = tokens, image
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, image_pe, token_valid)
        q, k = queries + tokens, keys + image_pe
        queries = self.layer_norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


def stability_scores(mask_logits: jax.Array, delta: float) -> jax.Array:
    """``[..., h, w] -> [...]``: area(logits > δ) / area(logits > −δ), 1 where the latter is empty."""
    area_i = jnp.sum(mask_logits > delta, axis=(-2, -1)).astype(jnp.float32)
    area_u = jnp.sum(mask_logits > -delta, axis=(-2, -1)).astype(jnp.float32)
    return jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)


class MaskDecoder(nnx.Module):
    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c = cfg.hidden_size
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        init = normal_init(0.02)
        emb = dict(axes=(None, "embed"), init=init, rngs=rngs)
        self.iou_token = Embed(1, c, **emb)
        self.mask_tokens = Embed(self.num_mask_tokens, c, **emb)
        self.obj_score_token = Embed(1, c, **emb)
        self.transformer = TwoWayTransformer(cfg, rngs=rngs)
        self.upscale_conv1 = ConvTranspose2d(c, c // 4, 2, rngs=rngs)
        self.upscale_conv2 = ConvTranspose2d(c // 4, c // 8, 2, rngs=rngs)
        self.upscale_layer_norm = LayerNorm(c // 4, eps=1e-6, axis_name="channels", rngs=rngs)
        self.output_hypernetworks_mlps = nnx.List([FeedForward(c, c, c // 8, 3, rngs=rngs)
                                                   for _ in range(self.num_mask_tokens)])
        self.iou_prediction_head = FeedForward(c, cfg.iou_head_hidden_dim, self.num_mask_tokens, cfg.iou_head_depth,
                                               sigmoid_output=True, rngs=rngs)
        self.conv_s0 = Conv2d(c, c // 8, 1, rngs=rngs)
        self.conv_s1 = Conv2d(c, c // 4, 1, rngs=rngs)
        self.pred_obj_score_head = FeedForward(c, c, 1, 3, rngs=rngs)

    def output_tokens(self) -> jax.Array:
        """``[2 + num_mask_tokens, C]``: object score, IoU, mask tokens (the original's order)."""
        return jnp.concatenate([self.obj_score_token.weight[...], self.iou_token.weight[...],
                                self.mask_tokens.weight[...]], axis=0)

    def __call__(self, image_embeddings, image_pe, sparse, sparse_valid, dense, high_res, *,
                 multimask_output: bool = False):
        """Predicts masks for one prompt per image.

        Args:
          image_embeddings: ``[b, h, w, C]`` (no_memory_embedding already added).
          image_pe: ``[h, w, C]`` dense positional encoding.
          sparse: ``[b, T, C]`` prompt tokens; sparse_valid ``[b, T]`` bool (None: all valid).
          dense: ``[b, h, w, C]`` dense prompt (the no-mask embedding).
          high_res: ``(feat_s0 [b, 4h, 4w, C/8], feat_s1 [b, 2h, 2w, C/4])``.
          multimask_output: masks 1..3 (True) or one mask (False; chosen by stability when
            ``dynamic_multimask_via_stability``, SAM2ImagePredictor's eval behaviour).
        Returns:
          ``(masks [b, M, 4h, 4w], iou [b, M], object_score_logits [b, 1])``; M = 3 or 1.
        """
        b, h, w, c = image_embeddings.shape
        out_tokens = jnp.broadcast_to(self.output_tokens()[None], (b, 2 + self.num_mask_tokens, c))
        tokens = jnp.concatenate([out_tokens, sparse.astype(out_tokens.dtype)], axis=1)
        if sparse_valid is None:
            sparse_valid = jnp.ones(sparse.shape[:2], bool)
        token_valid = jnp.concatenate([jnp.ones(out_tokens.shape[:2], bool), sparse_valid], axis=1)
        image = (image_embeddings + dense).reshape(b, h * w, c)
        hs, image = self.transformer(tokens, image, image_pe.reshape(1, h * w, c), token_valid)
        iou_out, mask_out = hs[:, 1], hs[:, 2: 2 + self.num_mask_tokens]

        feat_s0, feat_s1 = high_res
        up = self.upscale_conv1(image.reshape(b, h, w, c)) + feat_s1
        up = gelu_exact(self.upscale_layer_norm(up))
        up = gelu_exact(self.upscale_conv2(up) + feat_s0)  # [b, 4h, 4w, C/8]
        hyper = jnp.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1)
        masks = jnp.einsum("bmc,byxc->bmyx", hyper, up)
        iou = self.iou_prediction_head(iou_out)
        obj = self.pred_obj_score_head(hs[:, 0])

        if multimask_output:
            return masks[:, 1:], iou[:, 1:], obj
        if not self.cfg.dynamic_multimask_via_stability:
            return masks[:, :1], iou[:, :1], obj
        return (*self._choose_by_stability(masks, iou), obj)

    def _choose_by_stability(self, masks, iou):
        """Keeps mask 0 when its stability >= thresh, else the multimask output with the best IoU."""
        best = jnp.argmax(iou[:, 1:], axis=-1) + 1  # [b]
        best_mask = jnp.take_along_axis(masks, best[:, None, None, None], axis=1)
        best_iou = jnp.take_along_axis(iou, best[:, None], axis=1)
        stable = stability_scores(masks[:, 0], self.cfg.dynamic_multimask_stability_delta) \
            >= self.cfg.dynamic_multimask_stability_thresh
        out_mask = jnp.where(stable[:, None, None, None], masks[:, :1], best_mask)
        out_iou = jnp.where(stable[:, None], iou[:, :1], best_iou)
        return out_mask, out_iou
