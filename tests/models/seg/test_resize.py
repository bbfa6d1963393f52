"""torch-exact bilinear resize."""

import jax.numpy as jnp
import numpy as np
import pytest

from crab_jax.models.seg.resize import resize_bilinear


@pytest.mark.parametrize("in_size,out_size", [(32, 112), (64, 112), (112, 224), (224, 112), (50, 7)])
def test_resize_matches_torch_bilinear(in_size, out_size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 3, in_size, in_size + 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(out_size, out_size + 1), mode="bilinear",
                                          align_corners=False).numpy()
    got = resize_bilinear(jnp.asarray(x), (out_size, out_size + 1), axes=(2, 3))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("in_size,out_size", [(32, 112), (112, 224), (224, 112), (50, 7), (5, 5)])
def test_resize_gradient_matches_torch_autograd(in_size, out_size):
    """The hand-written VJP (gathers of the transposed taps) is the transpose torch's autograd runs."""
    import jax

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, in_size, in_size + 3)).astype(np.float32)
    cotangent = rng.normal(size=(2, 3, out_size, out_size + 1)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.interpolate(xt, size=(out_size, out_size + 1), mode="bilinear",
                                    align_corners=False).backward(torch.from_numpy(cotangent))
    ref = xt.grad.numpy()
    _, vjp = jax.vjp(lambda y: resize_bilinear(y, (out_size, out_size + 1), axes=(2, 3)), jnp.asarray(x))
    (got,) = vjp(jnp.asarray(cotangent))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
