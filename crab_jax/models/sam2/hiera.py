"""SAM 2's HieraDet trunk: patch embedding, windowed / global multi-scale blocks, q-pooling.

Maps are channels-last ``[batch, h, w, C]``. Parameter paths are HF ``Sam2HieraDetModel``'s
(``patch_embed.projection``, ``pos_embed``, ``pos_embed_window``, ``blocks.{i}.layer_norm1 /
attn.qkv / attn.proj / layer_norm2 / mlp.proj_in / mlp.proj_out / proj``); ``pos_embed`` and
``pos_embed_window`` keep torch's ``[1, C, h, w]`` layout so the converter copies them.

Everything that depends on sizes (window padding, pooling, the bicubic taps of the
positional embedding) is computed from static shapes at trace time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.attention import dot_product_attention
from crab_jax.models.layers import Conv2d, LayerNorm, Linear, activation, zeros_init
from crab_jax.models.sam2.config import HieraConfig
from crab_jax.parallel.sharding import param


def _cubic_taps(in_size: int, out_size: int) -> np.ndarray:
    """torch ``F.interpolate(mode='bicubic', align_corners=False)`` along one axis as a
    ``[out, in]`` float64 matrix: source ``scale·(dst+½)−½`` (not clamped, the cubic rule),
    four taps ``floor−1 .. floor+2`` clamped to the border, Keys' kernel with ``A = −0.75``."""
    a = -0.75
    scale = in_size / out_size
    src = scale * (np.arange(out_size) + 0.5) - 0.5
    base = np.floor(src)
    t = src - base

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    coeffs = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    m = np.zeros((out_size, in_size))
    for k in range(4):
        idx = np.clip(base + k - 1, 0, in_size - 1).astype(np.int64)
        np.add.at(m, (np.arange(out_size), idx), coeffs[:, k])
    return m


def resize_bicubic_nchw(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``[n, c, h, w] -> [n, c, H, W]``, torch's bicubic (align_corners=False, no antialias)."""
    wy = jnp.asarray(_cubic_taps(x.shape[2], size[0]), jnp.float32)
    wx = jnp.asarray(_cubic_taps(x.shape[3], size[1]), jnp.float32)
    return jnp.einsum("Yy,ncyx,Xx->ncYX", wy, x.astype(jnp.float32), wx, precision=jax.lax.Precision.HIGHEST)


def max_pool(x: jax.Array, stride: tuple[int, int] | None) -> jax.Array:
    """torch ``max_pool2d(kernel=stride=s, ceil_mode=False)`` on ``[b, h, w, c] -> [b, h//sh, w//sw, c]``."""
    if stride is None:
        return x
    sh, sw = stride
    b, h, w, c = x.shape
    x = x[:, : h // sh * sh, : w // sw * sw]
    return x.reshape(b, h // sh, sh, w // sw, sw, c).max(axis=(2, 4))


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
    """``[b, h, w, c] -> ([b·nh·nw, window, window, c], (padded_h, padded_w))``; zero-pads bottom/right."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: jax.Array, window: int, padded: tuple[int, int], size: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`window_partition`: ``[b·nh·nw, window, window, c] -> [b, h, w, c]``."""
    hp, wp = padded
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.reshape(b, hp // window, wp // window, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, : size[0], : size[1]]


class FeedForward(nnx.Module):
    """HF ``Sam2FeedForward``: ``proj_in``, ``layers.{i}`` (``num_layers − 2`` of them), ``proj_out``,
    the activation after every layer but the last; optional sigmoid on the output."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, *, act: str = "relu",
                 sigmoid_output: bool = False, rngs: nnx.Rngs):
        self.act = activation(act)
        self.sigmoid_output = sigmoid_output
        self.proj_in = Linear(in_dim, hidden, axes=("embed", "mlp"), rngs=rngs)
        self.layers = nnx.List([Linear(hidden, hidden, axes=("mlp", "mlp"), rngs=rngs)
                                for _ in range(num_layers - 2)])
        self.proj_out = Linear(hidden, out_dim, axes=("mlp", "embed"), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., in] -> [..., out]``."""
        x = self.act(self.proj_in(x))
        for layer in self.layers:
            x = self.act(layer(x))
        x = self.proj_out(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


class MultiScaleAttention(nnx.Module):
    """Hiera attention: packed ``qkv`` (``dim -> 3·dim_out``), optional max-pooled queries, ``proj``."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, query_stride: tuple[int, int] | None, *,
                 rngs: nnx.Rngs):
        self.num_heads, self.query_stride = num_heads, query_stride
        self.qkv = Linear(dim, 3 * dim_out, axes=("embed", "heads"), rngs=rngs)
        self.proj = Linear(dim_out, dim_out, axes=("heads", "embed"), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[n, h, w, dim] -> [n, h', w', dim_out]`` (``h' = h // stride`` when pooling queries)."""
        n, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.query_stride is not None:
            q = max_pool(q.reshape(n, h, w, -1), self.query_stride)
            h, w = q.shape[1:3]
            q = q.reshape(n, h * w, self.num_heads, -1)
        out = dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), like HF's
        return self.proj(out.reshape(n, h, w, -1))


class MultiScaleBlock(nnx.Module):
    """One Hiera block (pre-norm): [window partition] -> attention [q-pool] -> unpartition ->
    residual (projected and pooled when the width changes) -> MLP residual."""

    def __init__(self, cfg: HieraConfig, dim: int, dim_out: int, heads: int, window: int,
                 query_stride: tuple[int, int] | None, *, rngs: nnx.Rngs):
        self.dim, self.dim_out, self.window, self.query_stride = dim, dim_out, window, query_stride
        self.layer_norm1 = LayerNorm(dim, eps=cfg.layer_norm_eps, rngs=rngs)
        self.attn = MultiScaleAttention(dim, dim_out, heads, query_stride, rngs=rngs)
        self.layer_norm2 = LayerNorm(dim_out, eps=cfg.layer_norm_eps, rngs=rngs)
        self.mlp = FeedForward(dim_out, int(dim_out * cfg.mlp_ratio), dim_out, 2, act=cfg.hidden_act, rngs=rngs)
        self.proj = Linear(dim, dim_out, axes=("embed", "mlp"), rngs=rngs) if dim != dim_out else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[b, h, w, dim] -> [b, h', w', dim_out]``."""
        residual = x
        x = self.layer_norm1(x)
        if self.proj is not None:
            residual = max_pool(self.proj(x), self.query_stride)
        window = self.window
        if window > 0:
            size = x.shape[1:3]
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if self.query_stride is not None:
            # The pooled queries shrank each window (and the map) by the stride.
            window = self.window // self.query_stride[0]
            size = residual.shape[1:3]
            padded = (size[0] + (-size[0] % max(window, 1)), size[1] + (-size[1] % max(window, 1)))
        if self.window > 0:
            x = window_unpartition(x, window, padded, size)
        x = residual + x
        return x + self.mlp(self.layer_norm2(x))


class PatchEmbeddings(nnx.Module):
    def __init__(self, cfg: HieraConfig, *, rngs: nnx.Rngs):
        self.projection = Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_kernel_size, stride=cfg.patch_stride,
                                 padding=cfg.patch_padding, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """``[b, H, W, 3] -> [b, H/stride, W/stride, C]``."""
        return self.projection(pixels)


class HieraDet(nnx.Module):
    """The trunk: patch embedding + (interpolated background + tiled window) positional
    embedding, then the blocks; returns the output of every stage's last block."""

    def __init__(self, cfg: HieraConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbeddings(cfg, rngs=rngs)
        c, w0 = cfg.hidden_size, cfg.window_size_per_stage[0]
        self.pos_embed = param(zeros_init, rngs.params(),
                               (1, c, *cfg.window_positional_embedding_background_size),
                               (None, "embed", "positions", "positions"))
        self.pos_embed_window = param(zeros_init, rngs.params(), (1, c, w0, w0), (None, "embed", "positions", "positions"))
        self.blocks = nnx.List([MultiScaleBlock(cfg, **spec, rngs=rngs) for spec in cfg.block_specs()])

    def position_embedding(self, h: int, w: int) -> jax.Array:
        """``[1, h, w, C]``: bicubic background resized to the grid + the window table tiled over it."""
        window = self.pos_embed_window[...]
        wh, ww = window.shape[2:]
        if h % wh or w % ww:
            raise ValueError(f"the {h}x{w} patch grid is not a multiple of the {wh}x{ww} window embedding")
        pos = resize_bicubic_nchw(self.pos_embed[...], (h, w)) + jnp.tile(window, (1, 1, h // wh, w // ww))
        return pos.transpose(0, 2, 3, 1)

    def __call__(self, pixels: jax.Array) -> list[jax.Array]:
        """``[b, H, W, 3]`` normalised pixels -> one ``[b, h_s, w_s, C_s]`` map per stage (high-res first)."""
        x = self.patch_embed(pixels)
        x = x + self.position_embedding(*x.shape[1:3]).astype(x.dtype)
        ends = set(self.cfg.stage_ends)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in ends:
                out.append(x)
        return out

