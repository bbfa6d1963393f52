"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Attention is :class:`crab_jax.models.attention.ProjectedAttention` (SAM's ``Attention``:
q/k/v projected to ``C / downsample_rate``, no mask).
"""

from __future__ import annotations

import jax
from flax import nnx

from crab_jax.models.attention import ProjectedAttention
from crab_jax.models.layers import LayerNorm, Linear


def sam_attention(dim: int, num_heads: int, downsample_rate: int = 1, *, rngs: nnx.Rngs) -> ProjectedAttention:
    """SAM ``Attention(dim, num_heads, downsample_rate)``: q/k/v/out with bias, width ``dim // rate``."""
    return ProjectedAttention(dim, num_heads, internal_dim=dim // downsample_rate, kv_axis="heads", rngs=rngs)


class MLPBlock(nnx.Module):
    """``lin2(relu(lin1(x)))`` (the two-way transformer's MLP)."""

    def __init__(self, dim: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.lin1 = Linear(dim, mlp_dim, axes=("embed", "mlp"), rngs=rngs)
        self.lin2 = Linear(mlp_dim, dim, axes=("mlp", "embed"), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(jax.nn.relu(self.lin1(x)))


class TwoWayAttentionBlock(nnx.Module):
    """SAM two-way block: token self-attn, token→image, MLP, image→token (post-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, *,
                 skip_first_layer_pe: bool, rngs: nnx.Rngs):
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = sam_attention(dim, num_heads, rngs=rngs)
        self.norm1 = LayerNorm(dim, rngs=rngs)
        self.cross_attn_token_to_image = sam_attention(dim, num_heads, downsample_rate, rngs=rngs)
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.mlp = MLPBlock(dim, mlp_dim, rngs=rngs)
        self.norm3 = LayerNorm(dim, rngs=rngs)
        self.norm4 = LayerNorm(dim, rngs=rngs)
        self.cross_attn_image_to_token = sam_attention(dim, num_heads, downsample_rate, rngs=rngs)

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
        self.final_attn_token_to_image = sam_attention(dim, num_heads, downsample_rate, rngs=rngs)
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
