"""SAM 2's prompt encoder: random-Fourier point encoding, point / box-corner / not-a-point
embeddings, the dense no-mask embedding and the (unused by Crab+) mask embedding.

Parameter paths are HF ``Sam2PromptEncoder``'s (``point_embed`` ``[4, C]``: rows 0/1 negative /
positive points, 2/3 box top-left / bottom-right corners; ``not_a_point_embed``,
``no_mask_embed``, ``mask_embed.*``). The Fourier matrix is the model's
``shared_image_embedding.positional_embedding`` (HF keeps a tied copy here) and is passed in.

Labels: ``-1`` not a point (its embedding *replaces* the encoding), ``0`` / ``1`` negative /
positive point, ``2`` / ``3`` box corners. Coordinates are pixels of the model's
``image_size`` square input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.layers import Conv2d, Embed, LayerNorm, activation, normal_init
from crab_jax.models.sam2.config import PromptEncoderConfig
from crab_jax.parallel.sharding import buffer

NOT_A_POINT = -1


def fourier_encode(coords: jax.Array, gaussian: jax.Array) -> jax.Array:
    """``[..., 2]`` (x, y) in [0, 1] -> ``[..., C]``: ``[sin, cos](2π (2·coords − 1) @ gaussian)``;
    ``gaussian`` is ``[2, C/2]``."""
    proj = (2.0 * coords.astype(jnp.float32) - 1.0) @ gaussian.astype(jnp.float32)
    proj = np.float32(2 * np.pi) * proj
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def grid_encoding(gaussian: jax.Array, h: int, w: int) -> jax.Array:
    """The dense positional encoding of an ``h x w`` grid (pixel centres) ``-> [h, w, C]``."""
    y = (np.arange(h, dtype=np.float32) + np.float32(0.5)) / np.float32(h)
    x = (np.arange(w, dtype=np.float32) + np.float32(0.5)) / np.float32(w)
    coords = np.stack(np.broadcast_arrays(x[None, :], y[:, None]), axis=-1)  # [h, w, 2] (x, y)
    return fourier_encode(jnp.asarray(coords), gaussian)


class PositionalEmbedding(nnx.Module):
    """Holds the random Fourier matrix ``positional_embedding`` ``[2, C/2]`` (a torch buffer)."""

    def __init__(self, hidden_size: int, *, scale: float = 1.0, rngs: nnx.Rngs):
        value = scale * jax.random.normal(rngs.params(), (2, hidden_size // 2), jnp.float32)
        self.positional_embedding = buffer(value, (None, None))


class MaskEmbedding(nnx.Module):
    """Dense mask prompt: conv 2x2/2 -> LN -> act -> conv 2x2/2 -> LN -> act -> 1x1 conv (``[b, 4h, 4w, 1]``
    low-res mask logits -> ``[b, h, w, C]``). Not used by the Crab+ predictor path (no mask input)."""

    def __init__(self, cfg: PromptEncoderConfig, *, rngs: nnx.Rngs):
        c = cfg.mask_input_channels
        self.act = activation(cfg.hidden_act)
        self.conv1 = Conv2d(1, c // 4, 2, stride=2, rngs=rngs)
        self.conv2 = Conv2d(c // 4, c, 2, stride=2, rngs=rngs)
        self.conv3 = Conv2d(c, cfg.hidden_size, 1, rngs=rngs)
        self.layer_norm1 = LayerNorm(c // 4, eps=cfg.layer_norm_eps, axis_name="channels", rngs=rngs)
        self.layer_norm2 = LayerNorm(c, eps=cfg.layer_norm_eps, axis_name="channels", rngs=rngs)

    def __call__(self, masks: jax.Array) -> jax.Array:
        x = self.act(self.layer_norm1(self.conv1(masks)))
        x = self.act(self.layer_norm2(self.conv2(x)))
        return self.conv3(x)


class PromptEncoder(nnx.Module):
    def __init__(self, cfg: PromptEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c = cfg.hidden_size
        init = normal_init(0.02)
        self.mask_embed = MaskEmbedding(cfg, rngs=rngs)
        self.no_mask_embed = Embed(1, c, axes=(None, "embed"), init=init, rngs=rngs)
        self.point_embed = Embed(cfg.num_point_embeddings, c, axes=(None, "embed"), init=init, rngs=rngs)
        self.not_a_point_embed = Embed(1, c, axes=(None, "embed"), init=init, rngs=rngs)

    def embed_points(self, coords: jax.Array, labels: jax.Array, gaussian: jax.Array) -> jax.Array:
        """``coords [b, n, 2]`` (x, y model-input pixels), ``labels [b, n]`` int -> ``[b, n, C]``.

        Coordinates are shifted to the pixel centre (+0.5) and normalised by ``image_size``
        (SAM 2's ``_embed_points``; box corners go through here too, labels 2 and 3).
        """
        size = np.float32(self.cfg.image_size)
        pe = fourier_encode((coords.astype(jnp.float32) + np.float32(0.5)) / size, gaussian)
        labels = labels[..., None]
        pe = jnp.where(labels == NOT_A_POINT, self.not_a_point_embed.weight[0], pe)
        rows = jnp.take(self.point_embed.weight[...], jnp.maximum(labels[..., 0], 0), axis=0)
        return pe + jnp.where(labels >= 0, rows, 0.0)

    def dense_no_mask(self, batch: int) -> jax.Array:
        """``[batch, h, w, C]``: ``no_mask_embed`` over the low-resolution grid (no mask prompt)."""
        h, w = self.cfg.embedding_size
        return jnp.broadcast_to(self.no_mask_embed.weight[0], (batch, h, w, self.cfg.hidden_size))
