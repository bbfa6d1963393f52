"""torch's ``F.interpolate(mode='bilinear', align_corners=False)``, bit-faithful on CPU."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


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


@functools.lru_cache(maxsize=64)
def _transposed_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The resize's transpose as gathers: input ``j`` receives ``Σ_t weight[t, j] · g[index[t, j]]``
    over the outputs that read it (``[taps, in_size]`` each, unused taps weight 0)."""
    i0, i1, w0, w1 = _linear_taps(in_size, out_size)
    readers: list[list[tuple[int, float]]] = [[] for _ in range(in_size)]
    for k in range(out_size):
        readers[i0[k]].append((k, w0[k]))
        readers[i1[k]].append((k, w1[k]))
    taps = max(len(r) for r in readers)
    index = np.zeros((taps, in_size), np.int32)
    weight = np.zeros((taps, in_size), np.float32)
    for j, r in enumerate(readers):
        for t, (k, w) in enumerate(r):
            index[t, j], weight[t, j] = k, w
    return index, weight


def _along(shape_rank: int, axis: int, values: np.ndarray, dtype) -> jax.Array:
    """``values [n]`` shaped to broadcast along ``axis`` of a rank-``shape_rank`` array."""
    shape = [1] * shape_rank
    shape[axis] = values.shape[0]
    return jnp.asarray(values, dtype).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _resize_axis(x: jax.Array, out_size: int, axis: int) -> jax.Array:
    """``w0 · x[i0] + w1 · x[i1]`` along ``axis`` (torch's expression and order).

    The gradient is written as gathers too (:func:`_transposed_taps`): autodiff's transpose of
    a gather is a scatter-add, which XLA:CPU ran ~20x slower than this for the seg module's
    [batch, 224, 224, 71] maps.
    """
    i0, i1, w0, w1 = _linear_taps(x.shape[axis], out_size)
    return (jnp.take(x, i0, axis=axis) * _along(x.ndim, axis, w0, x.dtype)
            + jnp.take(x, i1, axis=axis) * _along(x.ndim, axis, w1, x.dtype))


def _resize_axis_forward(x, out_size, axis):
    return _resize_axis(x, out_size, axis), x.shape[axis]


def _resize_axis_backward(out_size, axis, in_size, g):
    index, weight = _transposed_taps(in_size, out_size)
    grad = jnp.take(g, index[0], axis=axis) * _along(g.ndim, axis, weight[0], g.dtype)
    for t in range(1, index.shape[0]):
        grad = grad + jnp.take(g, index[t], axis=axis) * _along(g.ndim, axis, weight[t], g.dtype)
    return (grad,)


_resize_axis.defvjp(_resize_axis_forward, _resize_axis_backward)


def resize_bilinear(x: jax.Array, size: tuple[int, int], axes: tuple[int, int] = (1, 2)) -> jax.Array:
    """torch ``F.interpolate(mode='bilinear', align_corners=False, antialias=False)``.

    ``jax.image.resize`` antialiases when shrinking, so this gathers the two taps per axis
    explicitly; width first, then height, which is torch's CPU summation order.
    """
    h_axis, w_axis = axes
    x = _resize_axis(x, size[1], w_axis)
    return _resize_axis(x, size[0], h_axis)
