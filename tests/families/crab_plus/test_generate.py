"""Greedy generation as ``inference_omni.py`` runs it (fixture generate_plus), and left padding."""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.families.crab_plus.decoding import jit_generate
from crab_jax.models.decoding import DecodeConfig
from tests.conftest import assert_parity
from tests.families.crab_plus.thinker_helpers import fixture_arrays, fixture_thinker, tolerance

pytestmark = pytest.mark.parity
FIXTURE = "generate_plus"


@pytest.fixture(scope="module")
def setup(crab_plus_fixtures_dir, crab_plus_manifest):
    from crab_jax.families.crab_plus.layout import thinker_batch
    model = fixture_thinker(crab_plus_fixtures_dir, crab_plus_manifest, FIXTURE)
    arrays = fixture_arrays(crab_plus_fixtures_dir, FIXTURE)
    batch = thinker_batch(arrays, model.cfg)
    dcfg = DecodeConfig(max_new_tokens=arrays["generated_ids"].shape[1], eos_token_id=model.cfg.tokens.eos,
                        pad_token_id=model.cfg.tokens.pad)
    return model, arrays, batch, dcfg


def _near_ties(manifest) -> set[tuple[int, int]]:
    """(step, row) pairs whose top-2 margin the fixture flags: a port within tolerance may flip them."""
    ties = manifest["fixtures"][FIXTURE]["checks"].get("near_ties_step_row_margin") or []
    return {(int(t[0]), int(t[1])) for t in ties}


def _assert_ids(ids, ref, ties, name):
    ids, ref = np.asarray(ids), np.asarray(ref)
    for row in range(ref.shape[0]):
        diff = np.flatnonzero(ids[row] != ref[row])
        if diff.size:  # only a flagged near tie may differ, and everything after it then follows
            assert (int(diff[0]), row) in ties, f"{name} row {row}: first differing step {diff[0]} is no near tie"


def test_batched_generation_is_the_originals(setup, crab_plus_manifest):
    """Right-padded batch: the shorter row's first token comes from a pad slot, as in the original."""
    model, arrays, batch, dcfg = setup
    np.testing.assert_array_equal(batch["position_ids"].swapaxes(0, 1), arrays["prefill_position_ids"])
    np.testing.assert_array_equal(batch["rope_deltas"], arrays["rope_deltas"])
    gen = jit_generate(model, batch, dcfg, keep_logits=True)
    _assert_ids(gen.tokens, arrays["generated_ids"], _near_ties(crab_plus_manifest), "batched")
    assert_parity(gen.step_logits, arrays["step_logits"], "generate step logits", tolerance(crab_plus_manifest, FIXTURE))
    # The decode positions the original used: slot + rope_delta on every stream.
    p = batch["input_ids"].shape[1]
    steps = np.arange(1, arrays["decode_position_ids"].shape[0] + 1)
    ours = p + steps[:, None] - 1 + batch["rope_deltas"][:, 0][None]
    np.testing.assert_array_equal(arrays["decode_position_ids"], np.broadcast_to(ours[:, None], arrays["decode_position_ids"].shape))


def _row(batch, i, length, pad_left: int = 0):
    """Row ``i`` cut to its ``length`` valid tokens (right padding removed), optionally left-padded."""
    out = {}
    for k, v in batch.items():
        if k == "position_ids":
            v = v[i:i + 1, :, :length]
            out[k] = np.concatenate([np.ones((1, 3, pad_left), v.dtype), v], axis=2)
        elif k in ("input_ids", "attention_mask", "media_index"):
            v = v[i:i + 1, :length]
            fill = {"input_ids": 0, "attention_mask": 0, "media_index": -1}[k]
            out[k] = np.concatenate([np.full((1, pad_left), fill, v.dtype), v], axis=1)
        else:
            out[k] = v[i:i + 1]
    # rope_deltas = max position + 1 - valid - pads: removing right pads and adding left ones.
    out["rope_deltas"] = batch["rope_deltas"][i:i + 1] + (batch["input_ids"].shape[1] - length) - pad_left
    return out


def test_each_sample_alone_and_left_padded(setup, crab_plus_manifest):
    """Alone, every sample generates what the original generates alone; left-padded next to a
    longer prompt it still does (the padded row no longer starts from a pad slot)."""
    model, arrays, batch, dcfg = setup
    ties = _near_ties(crab_plus_manifest)
    tol = tolerance(crab_plus_manifest, FIXTURE)
    lengths = arrays["attention_mask"].sum(-1)
    for i, length in enumerate(lengths):
        pad = int(batch["input_ids"].shape[1] - length)
        for pad_left in sorted({0, pad}):
            gen = jit_generate(model, _row(batch, i, int(length), pad_left), dcfg, keep_logits=True)
            _assert_ids(gen.tokens, arrays[f"single{i}_generated_ids"][None], ties, f"single {i}")
            assert_parity(gen.step_logits[:, 0], arrays[f"single{i}_step_logits"], f"single {i} pad_left {pad_left}", tol)
    padded = [i for i, n in enumerate(lengths) if n < batch["input_ids"].shape[1]]
    assert padded, "the fixture batch should have a right-padded row"
    # Negative control: right-padded, that row's batched answer differs from its alone answer.
    assert not np.array_equal(arrays["generated_ids"][padded[0]], arrays[f"single{padded[0]}_generated_ids"])
