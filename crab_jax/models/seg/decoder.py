"""``MaskDecoderMultiScale``: one level of Crab's two-scale SAM-style mask decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.layers import Conv2d, Embed, normal_init
from crab_jax.models.seg.blocks import MLP, PositionEmbeddingRandom, apply_upscaler, upscaler
from crab_jax.models.seg.config import SegConfig
from crab_jax.models.seg.query_generator import QueryGenerator
from crab_jax.models.seg.resize import resize_bilinear
from crab_jax.models.seg.transformer import TwoWayTransformer


class MaskDecoderMultiScale(nnx.Module):
    """Per level: query generator -> two-way transformer -> hypernetwork masks -> both heads."""

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
        self.output_upscaling = upscaler(c, c // 8, rngs)
        self.upsample_2x = upscaler(c, c, rngs)
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
            src = apply_upscaler(self.upsample_2x, src)
            b, h, w, _ = src.shape
            src = (jax.nn.sigmoid(previous_mask)[..., None] + 1.0) * src
            image_pe = self.pe1(h, w)
            dense_prompt = resize_bilinear(dense_prompt, (h, w))
        src = src + dense_prompt
        b, h, w, c = src.shape

        hs, keys = self.transformer[level](src.reshape(b, h * w, c), image_pe.reshape(1, h * w, c), tokens)
        hyper = self.hyper_mlp(hs[:, : self.cfg.avs_query_num])  # [b, Q, C/8]
        upscaled = apply_upscaler(self.output_upscaling, keys.reshape(b, h, w, c))  # [b, 2h, 2w, C/8]
        masks = jnp.einsum("bqc,bhwc->bhwq", hyper, upscaled)  # per-query maps, Q as channels
        masks = self.hyper_mlp_out(masks)  # [b, 2h, 2w, C/8]
        return self.ms3_s4_classfier(masks), self.avss_classifier(masks), queries
