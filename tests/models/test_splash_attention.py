"""The splash-attention kernel (``model.attention=splash``; run by Pallas' interpreter on CPU) equals
the reference attention with the causal + padding + packing mask: outputs and gradients, multi-head
and grouped-query, a packed row and a left-padded one; the LLaMA decoder with it equals the
reference decoder; under the trainer's FSDP activation sharding it runs per device (shard_map)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.attention import dot_product_attention, resolve_attention
from crab_jax.models.llama import LlamaConfig, LlamaForCausalLM, attention_mask_for
from crab_jax.models.splash_attention import MIN_BLOCK, block_size, splash_attention, splash_tiles
from tests import jax_env
from tests.train_helpers import REPO

SEQ = 2 * MIN_BLOCK


def segments(batch: int, seq: int, seed: int = 0) -> np.ndarray:
    """Row 0: three packed samples then padding; the others left-padded single samples."""
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, seq), np.int32)
    a, b = sorted(rng.integers(10, seq - 20, size=2))
    out[0, :a], out[0, a:b], out[0, b:seq - 7] = 1, 2, 3
    for r in range(1, batch):
        out[r, int(rng.integers(0, seq // 2)):] = 1
    return out


def reference(q, k, v, seg):
    mask = attention_mask_for((seg > 0).astype(jnp.int32), 0, seg.shape[1], seg)
    return dot_product_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_splash_equals_the_reference_with_segments_forward_and_backward(heads, kv_heads):
    rng = np.random.default_rng(1)
    b, d = 3, 32
    q = jnp.asarray(rng.normal(size=(b, SEQ, heads, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, SEQ, kv_heads, d)), jnp.float32) for _ in range(2))
    seg = jnp.asarray(segments(b, SEQ))
    real = np.asarray(seg) > 0  # padding queries differ by design (they attend padding): compared nowhere
    got, want = splash_attention(q, k, v, seg), reference(q, k, v, seg)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(seg[..., None, None] > 0, fn(q, k, v, seg), 0.0) ** 2)

    grads = jax.grad(loss(splash_attention), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for g, r, name in zip(grads, ref_grads, "qkv"):
        scale = float(jnp.max(jnp.abs(r)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4 * scale, err_msg=f"d{name}")


def test_block_size_and_the_error_for_a_length_it_cannot_tile():
    assert block_size(2048) == 512 and block_size(384) == 128 and block_size(SEQ) == SEQ
    with pytest.raises(ValueError, match=r"multiple of 128, got 112.*data.buckets"):
        block_size(112)
    assert splash_tiles(SEQ) and not splash_tiles(112)  # the decoder then takes the fused path for that bucket
    assert resolve_attention("auto", "tpu") == "splash" and resolve_attention("auto", "gpu") == "fused"
    assert resolve_attention("auto", "cpu") == "reference"


def test_llama_with_splash_equals_the_reference_decoder():
    base = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0)
    models = {name: LlamaForCausalLM(LlamaConfig.from_hf(base, attention=name), rngs=nnx.Rngs(0))
              for name in ("reference", "splash")}
    seg = segments(2, SEQ, seed=4)
    ids = jnp.asarray(np.random.default_rng(5).integers(3, 61, size=seg.shape), jnp.int32)
    positions = np.zeros_like(seg)
    for r in range(seg.shape[0]):
        for s in range(1, seg.max() + 1):
            at = np.flatnonzero(seg[r] == s)
            positions[r, at] = np.arange(len(at))
    args = dict(input_ids=ids, attention_mask=jnp.asarray((seg > 0).astype(np.int32)),
                position_ids=jnp.asarray(positions), segment_ids=jnp.asarray(seg))
    got, want = (np.asarray(models[n](**args)) for n in ("splash", "reference"))
    np.testing.assert_allclose(got[seg > 0], want[seg > 0], atol=1e-4 * np.abs(want).max())


_SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
from crab_jax.parallel.sharding import activation_sharding
from crab_jax.config.schema import DEFAULT_RULES
from crab_jax.models.splash_attention import splash_attention
from tests.models.test_splash_attention import SEQ, reference, segments
assert jax.device_count() == 8
mesh = Mesh(np.array(jax.devices()).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
rng = np.random.default_rng(2)
q = jnp.asarray(rng.normal(size=(8, SEQ, 4, 16)), jnp.float32)
k, v = (jnp.asarray(rng.normal(size=(8, SEQ, 2, 16)), jnp.float32) for _ in range(2))
seg = jnp.asarray(segments(8, SEQ))
def run(q, k, v, seg):
    with activation_sharding(mesh, DEFAULT_RULES):
        return splash_attention(q, k, v, seg)
lowered = jax.jit(run).lower(q, k, v, seg)
assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text(), "no shard_map"
got = np.asarray(jax.jit(run)(q, k, v, seg))
want = np.asarray(reference(q, k, v, seg))
real = np.asarray(seg) > 0
print("MAXDIFF", float(np.abs(got[real] - want[real]).max()))
"""


def test_splash_under_fsdp_activation_sharding_runs_per_device():
    env = dict(os.environ, XLA_FLAGS=jax_env.xla_flags("--xla_force_host_platform_device_count=8"), PYTHONPATH=str(REPO),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(proc.stdout.split("MAXDIFF")[1])
    assert diff < 2e-5
