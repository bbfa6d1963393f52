"""The shared attention (reference and fused): against a float64 numpy reference, GQA = repeated kv heads,
masks and biases."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.attention import (MultiheadAttention, ProjectedAttention, dot_product_attention, merge_heads,
                                       multi_head_attention, resolve_attention, split_heads)


def _reference(q, k, v, *, mask=None, bias=None, scale=None):
    """float64 ``softmax(q k^T * scale + bias) v`` with kv heads repeated; ``[b, s, h, d]`` in and out."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    h, kvh, d = q.shape[2], k.shape[2], q.shape[3]
    k, v = np.repeat(k, h // kvh, axis=2), np.repeat(v, h // kvh, axis=2)
    scale = 1 / np.sqrt(d) if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(b=2, tq=5, tk=7, h=4, kvh=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, tq, h, d)).astype(np.float32),
            rng.standard_normal((b, tk, kvh, d)).astype(np.float32),
            rng.standard_normal((b, tk, kvh, d)).astype(np.float32))


def test_split_merge_round_trip():
    x = jnp.arange(2 * 3 * 12, dtype=jnp.float32).reshape(2, 3, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(heads[:, :, 1], x[:, :, 3:6])  # head i = columns i*d .. (i+1)*d
    np.testing.assert_array_equal(merge_heads(heads), x)


IMPLEMENTATIONS = ("reference", "fused")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_matches_reference_with_grouped_heads(kv_heads, implementation):
    q, k, v = _qkv(kvh=kv_heads)
    got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), implementation=implementation)
    np.testing.assert_allclose(got, _reference(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_mask_bias_and_scale(implementation):
    attend = functools.partial(dot_product_attention, implementation=implementation)
    q, k, v = _qkv(kvh=2)
    rng = np.random.default_rng(1)
    mask = rng.random((2, 1, 5, 7)) > 0.3
    mask[..., 0] = True  # every query sees a key
    bias = rng.standard_normal((1, 4, 5, 7)).astype(np.float32)
    got = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask),
                                bias=jnp.asarray(bias), scale=0.3)
    np.testing.assert_allclose(got, _reference(q, k, v, mask=mask, bias=bias, scale=0.3), rtol=1e-5, atol=1e-5)
    # A blocked key has no influence.
    v2 = v.copy()
    v2[:, 6] += 100.0
    blocked = np.ones((2, 1, 5, 7), bool)
    blocked[..., 6] = False
    a = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(blocked))
    b = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v2), mask=jnp.asarray(blocked))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_implementation_names():
    assert resolve_attention("auto", "cpu") == "reference" and resolve_attention("auto", "gpu") == "fused"
    assert resolve_attention("fused", "cpu") == "fused"
    with pytest.raises(ValueError, match="model.attention='flash'"):
        resolve_attention("flash")
    q, k, v = (jnp.asarray(x) for x in _qkv())
    with pytest.raises(ValueError, match="probs_dropout"):
        dot_product_attention(q, k, v, probs_dropout=lambda p: p, implementation="fused")


def test_multi_head_attention_is_split_attend_merge():
    q, k, v = _qkv(kvh=2)
    flat = [jnp.asarray(x.reshape(*x.shape[:2], -1)) for x in (q, k, v)]
    got = multi_head_attention(*flat, 4, num_kv_heads=2)
    ref = _reference(q, k, v)
    np.testing.assert_allclose(got, ref.reshape(*ref.shape[:2], -1), rtol=1e-5, atol=1e-5)


def test_projected_attention_defaults_to_self_attention():
    attn = ProjectedAttention(16, 4, internal_dim=8, kv_axis="heads", rngs=nnx.Rngs(0))
    assert attn.q_proj.weight.shape == (16, 8) and attn.out_proj.weight.shape == (8, 16)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 16)), jnp.float32)
    np.testing.assert_array_equal(attn(x), attn(x, x, x))
    with pytest.raises(ValueError, match="heads do not divide"):
        ProjectedAttention(16, 3, rngs=nnx.Rngs(0))


def test_packed_multihead_attention_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref_mod = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    mod = MultiheadAttention(8, 2, rngs=nnx.Rngs(0))
    mod.in_proj_weight[...] = jnp.asarray(ref_mod.in_proj_weight.detach().numpy().T)
    mod.in_proj_bias[...] = jnp.asarray(ref_mod.in_proj_bias.detach().numpy())
    mod.out_proj.weight[...] = jnp.asarray(ref_mod.out_proj.weight.detach().numpy().T)
    mod.out_proj.bias[...] = jnp.asarray(ref_mod.out_proj.bias.detach().numpy())
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 3, 8)).astype(np.float32)
    kv = rng.standard_normal((2, 6, 8)).astype(np.float32)
    with torch.no_grad():
        ref, _ = ref_mod(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv))
    got = mod(jnp.asarray(q), jnp.asarray(kv), jnp.asarray(kv))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
