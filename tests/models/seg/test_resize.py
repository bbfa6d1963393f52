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
