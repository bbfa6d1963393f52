"""Parameterised pieces of the mask decoder: transposed conv, upscaler, Fourier positions, MLP.

Maps are channels-last ``[batch, h, w, C]``; ``weight``s are HWIO like :class:`crab_jax.models.layers.Conv2d`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.layers import Conv2d, LayerNorm, Linear, fan_in_init, gelu_exact, zeros_init
from crab_jax.parallel.sharding import buffer, param


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


def upscaler(in_ch: int, out_ch: int, rngs: nnx.Rngs) -> nnx.List:
    """torch ``Sequential(ConvTranspose2d(2, 2), LayerNorm2d, GELU)``; index 2 holds no weights."""
    return nnx.List([ConvTranspose2d(in_ch, out_ch, 2, rngs=rngs), LayerNorm(out_ch, eps=1e-6, rngs=rngs), None])


def apply_upscaler(seq: nnx.List, x: jax.Array) -> jax.Array:
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
