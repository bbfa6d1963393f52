"""torch's ``F.interpolate(mode='bilinear', align_corners=False)``, bit-faithful on CPU."""

from __future__ import annotations

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
