"""bf16 inference works (the original's released bf16 path does not: its adapters stay float32
after ``model.to(bfloat16)`` and the first forward raises) and stays close to float32."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from crab_jax.families.crab_plus.decoding import jit_generate
from crab_jax.models.decoding import DecodeConfig
from tests.families.crab_plus.thinker_helpers import device_batch, fixture_arrays, fixture_thinker

pytestmark = pytest.mark.slow
FIXTURE = "thinker_av"
# bf16 keeps 8 mantissa bits: ~4e-3 relative per op; through 2+2+2 tiny layers the logits move a few %.
BF16_REL = 5e-2


@pytest.fixture(scope="module")
def fp32(crab_plus_fixtures_dir, crab_plus_manifest):
    model = fixture_thinker(crab_plus_fixtures_dir, crab_plus_manifest, FIXTURE)
    batch = device_batch(fixture_arrays(crab_plus_fixtures_dir, FIXTURE), model.cfg)
    return model, batch, np.asarray(model(batch).logits)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bf16_forward_is_close_to_fp32(fp32, param_dtype, crab_plus_fixtures_dir, crab_plus_manifest):
    _, batch, ref = fp32
    model = fixture_thinker(crab_plus_fixtures_dir, crab_plus_manifest, FIXTURE, dtype="bfloat16",
                            param_dtype=param_dtype)
    lora_b = model.model.layers[0].self_attn.q_proj.lora_B[...]
    assert lora_b.dtype == jnp.dtype(param_dtype)  # adapters follow the model's dtype, unlike the original
    out = model(batch)
    logits = np.asarray(out.logits)
    assert out.logits.dtype == jnp.float32 and np.isfinite(logits).all()
    valid = np.asarray(batch["attention_mask"]).astype(bool)
    err = np.abs(logits - ref)[valid].max() / np.abs(ref[valid]).max()
    print(f"bf16 (params {param_dtype}) vs fp32 logits: max err / max|ref| = {err:.3e}")
    assert err < BF16_REL
    assert err > 1e-5, "bf16 run is bit-close to fp32: the dtype was not applied"
    assert np.isfinite(float(out.lm_loss))


def test_bf16_generation_runs(crab_plus_fixtures_dir, crab_plus_manifest):
    model = fixture_thinker(crab_plus_fixtures_dir, crab_plus_manifest, "generate_plus", dtype="bfloat16",
                            param_dtype="bfloat16")
    batch = device_batch(fixture_arrays(crab_plus_fixtures_dir, "generate_plus"), model.cfg)
    dcfg = DecodeConfig(max_new_tokens=4, eos_token_id=model.cfg.tokens.eos, pad_token_id=model.cfg.tokens.pad)
    gen = jit_generate(model, batch, dcfg, keep_logits=True)
    assert np.isfinite(np.asarray(gen.step_logits)).all()
    assert np.asarray(gen.tokens).shape == (batch["input_ids"].shape[0], 4)
