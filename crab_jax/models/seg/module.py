"""``SegModule``: prompt tokens + CLIP taps -> per-level mask logits (see the package docstring)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.layers import Conv2d, Embed, LayerNorm, Linear, normal_init
from crab_jax.models.seg.blocks import PositionEmbeddingRandom
from crab_jax.models.seg.config import SegConfig
from crab_jax.models.seg.decoder import MaskDecoderMultiScale
from crab_jax.models.seg.resize import resize_bilinear


class SegOutput(NamedTuple):
    """``binary_logits`` ``[batch, binary_classes, S, S]`` (read for s4 / ms3 / ref-avs samples),
    ``avss_logits`` ``[batch, avss_classes, S, S]`` (read for AVSS samples), ``S = image_size``;
    ``intermediates``: debugging tensors (None unless asked)."""

    binary_logits: jax.Array
    avss_logits: jax.Array
    intermediates: dict | None


class SegModule(nnx.Module):
    """Crab's ``SegModule`` (see :mod:`crab_jax.models.seg`)."""

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
