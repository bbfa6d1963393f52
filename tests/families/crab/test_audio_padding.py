"""Task-mixed batches (issue 11): audio zero-padded to the batch's longest fbank gives exactly
the unpadded LLM rows (BEATs and the audio Q-Former mask the padded patches)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.families.crab.model import Crab
from crab_jax.families.crab.presets import tiny_crab_config


def test_padded_audio_rows_equal_the_unpadded_ones():
    cfg = tiny_crab_config()
    model = Crab(cfg, rngs=nnx.Rngs(0))
    model.eval()
    encode = nnx.jit(lambda m, f, v: m.encode_audio(f, v))
    encode_plain = nnx.jit(lambda m, f: m.encode_audio(f))
    rng = np.random.default_rng(0)
    p = cfg.beats.input_patch_size
    short, long = 2 * p, 5 * p
    a = rng.standard_normal((1, 2, short, 128)).astype(np.float32)  # a 2-segment sample, short audio
    b = rng.standard_normal((1, 2, long, 128)).astype(np.float32)   # a sample with longer audio
    batch = np.zeros((2, 2, long, 128), np.float32)
    batch[0, :, :short], batch[1] = a[0], b[0]
    valid = jnp.asarray([[short, short], [long, long]], jnp.int32)
    rows = np.asarray(encode(model, jnp.asarray(batch), valid))
    np.testing.assert_allclose(rows[0], np.asarray(encode_plain(model, jnp.asarray(a)))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows[1], np.asarray(encode_plain(model, jnp.asarray(b)))[0], rtol=1e-5, atol=1e-5)
    leaked = np.asarray(encode_plain(model, jnp.asarray(batch)))[0]
    assert np.abs(leaked - rows[0]).max() > 1e-4, "padding without the mask must change the rows"
