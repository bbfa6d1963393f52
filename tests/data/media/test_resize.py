"""The NumPy antialiased bicubic resize against torch's (torch only here, as the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crab_jax.data.media.resize import (axis_taps, resize_bicubic_antialias, resize_uint8_like_torchvision)

# (in_h, in_w) -> (out_h, out_w): down, up, mixed, non-square, tiny, one axis unchanged.
CASES = [((360, 450), (224, 224)), ((50, 70), (224, 224)), ((300, 200), (120, 90)), ((37, 224), (224, 100)),
         ((7, 5), (3, 11)), ((224, 224), (224, 160)), ((540, 720), (224, 224))]
AXES = [(450, 224), (360, 224), (100, 224), (37, 224), (224, 225), (7, 3), (1000, 224), (1, 5), (5, 1)]
TIE_WINDOW = 1e-3  # a uint8 may differ only where torch's float value is this close to a .5 tie


def torch_weights(n_in: int, n_out: int) -> np.ndarray:
    """torch's weight matrix ``[out, in]`` of one axis: resize one-hot rows (sums with zeros are exact)."""
    eye = torch.eye(n_in, dtype=torch.float32).reshape(n_in, 1, 1, n_in)
    out = torch.nn.functional.interpolate(eye, size=(1, n_out), mode="bicubic", align_corners=False, antialias=True)
    return out[:, 0, 0, :].T.numpy()


def dense(n_in: int, n_out: int, a: float | None = None) -> np.ndarray:
    first, w = axis_taps(n_in, n_out) if a is None else axis_taps(n_in, n_out, a)
    mat = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        for j in range(w.shape[1]):
            mat[i, min(first[i] + j, n_in - 1)] += w[i, j]
    return mat


def torch_float(x: np.ndarray, size, antialias: bool = True) -> np.ndarray:
    return torch.nn.functional.interpolate(torch.from_numpy(x.astype(np.float32)), size=size, mode="bicubic",
                                           align_corners=False, antialias=antialias).numpy()


def torchvision_uint8(x: np.ndarray, size, antialias: bool = True) -> np.ndarray:
    """torchvision's v1 tensor resize of uint8: float32 interpolate, clamp, round, uint8."""
    return np.round(np.clip(torch_float(x, size, antialias), 0, 255)).astype(np.uint8)


@pytest.mark.parametrize("n_in,n_out", AXES)
def test_weights_match_torch(n_in, n_out):
    ours, ref = dense(n_in, n_out), torch_weights(n_in, n_out)
    err = float(np.abs(ours - ref).max())
    print(f"weights {n_in}->{n_out}: max abs err {err:.2e}, bitwise equal {np.array_equal(ours, ref)}")
    assert err <= 1e-6  # bitwise on the AVX-512 build; a build without FMAs may differ by an ulp


@pytest.mark.parametrize("src,dst", CASES)
def test_resize_matches_torch(src, dst):
    rng = np.random.default_rng(hash((src, dst)) % 2 ** 32)
    x = rng.integers(0, 256, (2, 3, *src), dtype=np.uint8)
    ref_f = torch_float(x, dst)
    ours_f = resize_bicubic_antialias(x, dst)
    assert ours_f.shape == ref_f.shape and ours_f.dtype == np.float32
    float_err = float(np.abs(ours_f - ref_f).max())
    ours, ref = resize_uint8_like_torchvision(x, dst), torchvision_uint8(x, dst)
    diff = ours.astype(int) - ref
    off = np.abs(diff) > 0
    near_tie = np.abs(np.abs(ref_f - np.floor(ref_f)) - 0.5) < TIE_WINDOW
    print(f"resize {src}->{dst}: float max abs err {float_err:.2e}; uint8 pixels differing "
          f"{int(off.sum())} of {diff.size} (all within {TIE_WINDOW} of a .5 tie: {bool(np.all(near_tie[off]))})")
    assert float_err <= 1e-3
    assert np.abs(diff).max() <= 1 and np.all(near_tie[off])
    assert off.sum() <= max(2, diff.size // 100_000)


def test_negative_controls():
    """A resize without antialiasing, or with the -0.75 cubic, is far from torch's antialiased one."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 3, 360, 450), dtype=np.uint8)
    ours = resize_uint8_like_torchvision(x, (224, 224))
    no_aa = torchvision_uint8(x, (224, 224), antialias=False)
    frac = float((ours != no_aa).mean())
    print(f"negative control: {frac:.1%} of pixels differ from the non-antialiased resize")
    assert frac > 0.5
    err = float(np.abs(dense(450, 224, a=-0.75) - torch_weights(450, 224)).max())
    print(f"negative control: a=-0.75 weights differ from torch's by {err:.3f}")
    assert err > 1e-3


def test_identity_and_dtype():
    x = np.arange(2 * 3 * 8 * 8, dtype=np.int64).reshape(2, 3, 8, 8).astype(np.uint8)
    same = resize_uint8_like_torchvision(x, (8, 8))
    assert np.array_equal(same, x) and same is not x
    with pytest.raises(TypeError):
        resize_uint8_like_torchvision(x.astype(np.float32), (4, 4))
    with pytest.raises(ValueError):
        axis_taps(0, 4)
