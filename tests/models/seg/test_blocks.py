"""Decoder blocks against torch."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.seg.blocks import ConvTranspose2d


def test_conv_transpose_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    conv = torch.nn.ConvTranspose2d(5, 3, kernel_size=2, stride=2)
    x = rng.normal(size=(2, 5, 4, 6)).astype(np.float32)
    with torch.no_grad():
        ref = conv(torch.from_numpy(x)).numpy()
    layer = ConvTranspose2d(5, 3, 2, rngs=nnx.Rngs(0))
    layer.weight[...] = jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 0, 1))
    layer.bias[...] = jnp.asarray(conv.bias.detach().numpy())
    got = layer(jnp.asarray(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
