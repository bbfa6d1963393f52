"""Crab's cached generation (crab_jax.families.crab.decoding) on a tiny random Crab."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.families.crab import decoding as D
from crab_jax.models import decoding as G
from tests.families.crab.generation_helpers import (base_model, cfg,  # noqa: F401 (fixtures)
                                                    DCFG, EOS, PAD, SEQ, chain_model,
                                                    make_random_model, prompt_batch, reference_forward,
                                                    frame_features)


@pytest.fixture(scope="module")
def random_model(base_model):
    return make_random_model(base_model)


def test_cached_greedy_equals_uncached_argmax(cfg, random_model):
    batch = prompt_batch(cfg, last_tokens=[17, 40], text_lens=[3, 9], seed=0)
    assert batch["attention_mask"].sum(1).tolist() == [15, 21]  # two prompt lengths, left-padded
    gen = D.jit_generate(random_model, batch, DCFG)
    tokens, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    assert tokens.shape == (2, DCFG.max_new_tokens) and lengths.shape == (2,)
    assert len(set(tokens[:, :lengths.min()].ravel().tolist())) > 2, f"degenerate generation {tokens}"
    logits, _, _ = reference_forward(random_model, batch, gen.tokens)
    for j in range(int(lengths.max())):
        expected = np.asarray(jnp.argmax(logits[:, SEQ - 1 + j], axis=-1))
        live = j < lengths
        np.testing.assert_array_equal(tokens[live, j], expected[live], err_msg=f"step {j}")
    # Samples are independent: the same prompts in the other order give the same rows.
    swapped = D.jit_generate(random_model, {k: v[::-1] for k, v in batch.items()}, DCFG)
    np.testing.assert_array_equal(np.asarray(swapped.tokens)[::-1], tokens)


def test_stops_at_eos_and_pads_after(cfg, base_model):
    chain = [60, 61, 62, 63, EOS]  # sample 0 ends its prompt with 60: EOS at step 3
    model = chain_model(base_model, chain)
    batch = prompt_batch(cfg, last_tokens=[60, 62], text_lens=[5, 2], seed=1)
    gen = jax.device_get(D.jit_generate(model, batch, DCFG))
    np.testing.assert_array_equal(gen.tokens[0], [61, 62, 63, EOS] + [PAD] * 6)
    np.testing.assert_array_equal(gen.tokens[1], [63, EOS] + [PAD] * 8)
    np.testing.assert_array_equal(gen.lengths, [4, 2])
    np.testing.assert_array_equal(gen.finished, [True, True])
    # Nothing after EOS reaches a mask: a sample that ended emits no more flags.
    np.testing.assert_array_equal(gen.mask_count, [0, 0])


def test_one_compile_for_two_prompt_batches_of_one_shape(cfg, random_model):
    first = prompt_batch(cfg, last_tokens=[17, 40], text_lens=[3, 9], seed=0)
    second = prompt_batch(cfg, last_tokens=[5, 33], text_lens=[10, 1], seed=7)  # other lengths, same shape
    D.jit_generate(random_model, first, DCFG)
    key = (first["input_ids"].shape, DCFG.max_new_tokens)
    before = G.TRACES[key]
    assert before >= 1
    out = D.jit_generate(random_model, second, DCFG)
    jax.block_until_ready(out.tokens)
    assert G.TRACES[key] == before, "a second prompt batch of the same shape recompiled the generator"


def test_generated_mask_tokens_give_masks_from_the_right_hidden_states(cfg, base_model):
    ids = cfg.special_token_ids
    mask_ids = list(cfg.mask_token_ids)
    start = 60
    chain = [start, ids["<mask_start>"], *mask_ids, ids["<mask_end>"], EOS]
    model = chain_model(base_model, chain)
    # Sample 0 generates <mask_start> <mask_0..5> <mask_end> </s>; sample 1 starts mid-way
    # (prompt ends with <mask_2>) and generates only 3 mask tokens: no mask for it.
    batch = prompt_batch(cfg, last_tokens=[start, mask_ids[2]], text_lens=[4, 6], seed=2)
    gen = jax.device_get(D.jit_generate(model, batch, DCFG))
    np.testing.assert_array_equal(gen.tokens[0, :9], chain[1:])
    np.testing.assert_array_equal(gen.tokens[1, :6], [*mask_ids[3:], ids["<mask_end>"], EOS, PAD])
    np.testing.assert_array_equal(gen.mask_count, [6, 3])
    np.testing.assert_array_equal(gen.mask_valid, [True, False])
    # Mask token k is generated at step k + 1; its vector is step (k + 1)'s hidden state,
    # i.e. the state at the slot just before <mask_k> (the one that predicts it).
    np.testing.assert_array_equal(gen.mask_steps[0], np.arange(1, 7))
    np.testing.assert_array_equal(gen.mask_steps[1], [-1, -1, -1, 0, 1, 2])
    _, hidden, taps = reference_forward(model, batch, jnp.asarray(gen.tokens))
    assert len(set(batch["seg_frame"].tolist())) > 1, "the rows must read different frame slots"
    features = frame_features(cfg, taps, batch["seg_frame"])
    p = SEQ
    expected = np.asarray(hidden[0, p - 1 + 1: p - 1 + 7])  # slots of <mask_start>, <mask_0..4>
    np.testing.assert_allclose(gen.mask_embeddings[0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gen.mask_embeddings[1, 3:], np.asarray(hidden[1, p - 1: p + 2]), rtol=1e-4, atol=1e-4)
    # The seg module ran on exactly those vectors and the CLIP taps of each row's seg_frame.
    size = cfg.seg.image_size
    assert gen.binary_logits.shape == (2, 1, size, size)
    assert gen.avss_logits.shape == (2, cfg.seg.avss_classes, size, size)
    assert gen.pred_masks.shape == (2, size, size)
    np.testing.assert_array_equal(gen.pred_masks, (gen.binary_logits[:, 0] > 0).astype(np.int32))
    direct = nnx.jit(lambda seg, e, f: seg(e, f, jnp.zeros(2, bool)))(model.seg_module, gen.mask_embeddings, features)
    np.testing.assert_allclose(gen.binary_logits, np.asarray(direct.binary_logits), rtol=1e-4, atol=1e-4)
