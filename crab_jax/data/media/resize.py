"""Antialiased bicubic resize as torch computes it (host-side NumPy, no torch at run time).

``torchvision.transforms.functional.resize(uint8 video [T, C, H, W], size, BICUBIC,
antialias=True)`` (the v1 tensor path the Qwen vision utils call) casts to float32, runs
``torch.nn.functional.interpolate(mode="bicubic", align_corners=False, antialias=True)``,
clamps to [0, 255], rounds half to even and casts back to uint8. On CPU that interpolation is
separable (ATen ``UpSampleKernel.cpp``, ``separable_upsample_generic_Nd_kernel_impl``): the
last axis (width) first, then the one before (height), each output a float32 weighted sum of
a window of inputs; an axis whose size does not change is skipped.

Per output index ``i`` of an axis (``scale = in / out`` in float32):

* ``center = scale * (i + 0.5)``; ``support = 2 * scale`` when downsampling (the bicubic
  window widened by the scale: the antialiasing), 2 otherwise; the window is
  ``[trunc(center - support + 0.5), trunc(center + support + 0.5))`` clipped to the input;
* weight ``j`` = ``cubic((xmin + j - center + 0.5) / max(scale, 1))``, normalised by their sum.
  [quirk] With antialias torch's cubic is Keys' ``a = -0.5`` (PIL-compatible), not the
  ``a = -0.75`` of its non-antialiased bicubic.

The weights reproduce ATen's float32 / double mix term by term, including the fused
multiply-adds its compiled cubic uses (they match torch's weights bit for bit). The
window sums are plain float32 multiply-then-add in window order; torch's compiled loop may
fuse some of those into FMAs (it depends on the build and the CPU), so its float outputs can
differ by an ulp. After rounding to uint8 that changes a pixel only when the exact value sits
within an ulp of a ``.5`` tie: measured 0 of 1.5 M pixels on the Crab+ fixture clip and at
most a handful per million on random noise (tests/data/media/test_resize.py).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

BICUBIC_AA_A = -0.5  # torch's antialiased bicubic (Keys a = -0.5); -0.75 only without antialias
_F32 = np.float32


def _round_f32(exact: Fraction) -> np.float32:
    """``exact`` correctly rounded to float32 (round to odd at double precision, then nearest)."""
    d = float(exact)  # correctly rounded to double
    if Fraction(d) != exact:
        # Round to odd: the neighbour toward zero with its last bit set. From 53 bits this
        # makes the final rounding to 24 bits exact (no double rounding).
        if abs(Fraction(d)) > abs(exact):
            d = float(np.nextafter(d, 0.0))
        bits = np.array([d], np.float64).view(np.int64) | 1
        d = float(bits.view(np.float64)[0])
    return _F32(d)


def _fma32(a, b, c) -> np.float32:
    """float32 fused multiply-add ``a * b + c`` with one rounding (what the compiled kernel does)."""
    return _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def _cubic(x: np.float32, a: float) -> np.float32:
    """ATen's ``aa_filter`` for bicubic on float32, its FMA contractions included."""
    x = abs(_F32(x))
    a = _F32(a)
    if x < 1:
        inner = _fma32(a + _F32(2), x, -(a + _F32(3)))  # (a + 2) x - (a + 3)
        return _fma32(_F32(inner * x), x, _F32(1))  # ((..) x) x + 1
    if x < 2:
        inner = _fma32(a, x, -(_F32(5) * a))  # a x - 5a
        inner = _fma32(inner, x, _F32(8) * a)  # (..) x + 8a
        return _fma32(inner, x, -(_F32(4) * a))  # (..) x - 4a
    return _F32(0)


@functools.lru_cache(maxsize=64)
def axis_taps(in_size: int, out_size: int, a: float = BICUBIC_AA_A) -> tuple[np.ndarray, np.ndarray]:
    """Window start and weights of every output index of one axis (ATen's
    ``_compute_indices_min_size_weights_aa`` for float32).

    Returns:
      ``(first [out] int64, weights [out, taps] float32)``: output ``i`` is
      ``sum_j x[min(first[i] + j, in - 1)] * weights[i, j]``; weights past a window are 0.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize needs positive sizes, got {in_size} -> {out_size}")
    scale = _F32(in_size) / _F32(out_size)
    downsampling = scale >= 1
    support = _F32(2.0 * float(scale)) if downsampling else _F32(2.0)
    max_taps = int(np.ceil(support)) * 2 + 1
    invscale = _F32(1.0 / float(scale)) if downsampling else _F32(1.0)
    first = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, max_taps), np.float32)
    for i in range(out_size):
        center = _F32(float(scale) * (i + 0.5))
        xmin = max(int(float(center - support) + 0.5), 0)  # C++ truncation toward zero
        xsize = min(int(float(center + support) + 0.5), in_size) - xmin
        xsize = min(max(xsize, 0), max_taps)
        w = [_cubic(_F32((float(_F32(j + xmin) - center) + 0.5) * float(invscale)), a) for j in range(xsize)]
        total = _F32(0)
        for v in w:
            total = _F32(total + v)
        first[i] = xmin
        weights[i, :xsize] = [v / total for v in w] if total != 0 else w
    # Drop trailing all-zero columns (ATen's max window is wider than any actual window).
    taps = int(np.flatnonzero((weights != 0).any(0)).max(initial=0)) + 1
    return first, weights[:, :taps].copy()


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass of ``x`` (float32) along ``axis``."""
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    first, weights = axis_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    out = None
    for j in range(weights.shape[1]):
        src = np.take(x, np.minimum(first + j, in_size - 1), axis=axis)
        term = src * weights[:, j].reshape(shape)
        out = term if out is None else out + term  # float32, window order
    return out


def resize_bicubic_antialias(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``interpolate(images, size, mode="bicubic", align_corners=False, antialias=True)``.

    Args:
      images: ``[..., H, W]`` (channels first, as torch), any real dtype.
      size: ``(out_h, out_w)``.
    Returns:
      ``[..., out_h, out_w]`` float32.
    """
    x = np.asarray(images, np.float32)
    if x.ndim < 2:
        raise ValueError(f"resize needs [..., H, W], got shape {x.shape}")
    x = _resize_axis(x, x.ndim - 1, int(size[1]))  # width first, as ATen
    return np.ascontiguousarray(_resize_axis(x, x.ndim - 2, int(size[0])))


def resize_uint8_like_torchvision(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision ``resize(uint8 tensor, size, BICUBIC, antialias=True)``: float32 resize,
    clamp to [0, 255], round half to even, uint8.

    Args:
      images: ``[..., H, W]`` uint8 (e.g. ``[T, 3, H, W]`` video frames).
    Returns:
      ``[..., out_h, out_w]`` uint8.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.shape[-2:] == tuple(size):
        return images.copy()
    out = resize_bicubic_antialias(images, size)
    return np.round(np.clip(out, 0, 255)).astype(np.uint8)
