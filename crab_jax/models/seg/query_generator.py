"""Crab's query generator: learned queries cross-attending to the prompt token of a level."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.attention import MultiheadAttention
from crab_jax.models.layers import LayerNorm, Linear, gelu_exact


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
