"""Shared decoding pieces (crab_jax.models.decoding): token choice, the rolling buffer, a bound generator."""

from __future__ import annotations

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models import decoding as D

EOS, PAD = 2, 0


def test_rolling_buffer_keeps_the_last_entries():
    buf = jnp.zeros((2, 3), jnp.int32)
    for step in range(5):
        buf = D.push(buf, jnp.full((2,), step, jnp.int32), jnp.array([True, step % 2 == 0]))
    np.testing.assert_array_equal(np.asarray(buf), [[2, 3, 4], [0, 2, 4]])


def test_sampling_respects_top_k_and_greedy_limit():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 512))
    keys = jax.random.key(0)
    top2 = np.asarray(D.select_tokens(logits, keys, D.DecodeConfig(max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0, top_k=2)))
    assert set(top2.tolist()) == {0, 1}
    nucleus = np.asarray(D.select_tokens(logits, keys, D.DecodeConfig(max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0, top_p=0.6)))
    assert set(nucleus.tolist()) == {0, 1}  # 0.5 < 0.6, so token 1 is still needed
    cold = np.asarray(D.select_tokens(logits, keys, D.DecodeConfig(max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD, temperature=1e-4)))
    assert set(cold.tolist()) == {0}
    with pytest.raises(ValueError, match="top_p"):
        D.DecodeConfig(max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD, top_p=0.0)


class _Scaled(nnx.Module):
    """``dropout(x) * w * scale``: a weight, a static attribute and a train / eval mode."""

    def __init__(self):
        self.w = nnx.Param(jnp.ones((4,)))
        self.scale = 2.0
        self.dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.dropout(x) * self.w * self.scale


@nnx.jit
def _run(model, x):
    return model(x)


def test_bound_generator_runs_in_inference_mode_and_sees_weights_written_in_place():
    model, x = _Scaled(), jnp.arange(1.0, 5.0)
    bound = D.bound_to_model(_run, model)
    assert D.bound_to_model(_run, model) is bound, "a second call walked the model again"
    np.testing.assert_array_equal(bound(x), x * 2.0)  # dropout off: put in eval mode
    model.w[...] = jnp.full((4,), 3.0)
    np.testing.assert_array_equal(D.bound_to_model(_run, model)(x), x * 6.0)
    nnx.update(model, nnx.State({"w": jnp.full((4,), 0.5)}))
    np.testing.assert_array_equal(D.bound_to_model(_run, model)(x), x * 1.0)
    # A static attribute changed after the first call: the bound graph is kept until unbind.
    model.scale = 10.0
    np.testing.assert_array_equal(D.bound_to_model(_run, model)(x), x * 1.0)
    D.unbind(model)
    np.testing.assert_array_equal(D.bound_to_model(_run, model)(x), x * 5.0)
    # Another model is bound on its own, and the first one is no longer held.
    released = weakref.ref(model)
    other = _Scaled()
    np.testing.assert_array_equal(D.bound_to_model(_run, other)(x), x * 2.0)
    del model, bound
    gc.collect()
    assert released() is None, "the cache kept a model that is no longer bound"
