"""A tiny random Crab and prompt batches for the generation tests (families/crab, evaluation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.data.text.sequence import MediaBlock, expand_placeholders, left_pad_batch
from crab_jax.families.crab import decoding as D
from crab_jax.families.crab.model import Crab, media_layout
from crab_jax.families.crab.presets import tiny_crab_config
from crab_jax.models.decoding import DecodeConfig, prepare_for_inference
from crab_jax.models.losses import IGNORE_INDEX

FRAME_SLOTS, AUDIO_SLOTS, FBANK_FRAMES, SEQ = 2, 1, 16, 24
EOS = 2
PAD = 0  # output fill after EOS; differs from EOS so that padding is visible
DCFG = DecodeConfig(max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD)
CHAIN_SCALE = 1000.0  # embedding norm of chain tokens: dominates every layer's O(1) output


def prompt_batch(cfg, last_tokens, text_lens, seed):
    """Left-padded prompts ``<s> text <video_start><video><video_end><audio_start><audio><audio_end> last``."""
    rng = np.random.default_rng(seed)
    ids = cfg.special_token_ids
    layout = media_layout(cfg, FRAME_SLOTS, AUDIO_SLOTS)
    qv, qa = cfg.visual_qformer.num_query_tokens, cfg.audio_qformer.num_query_tokens
    blocks = {ids["<video>"]: MediaBlock(layout.visual_offset, FRAME_SLOTS * qv),
              ids["<audio>"]: MediaBlock(layout.audio_offset, AUDIO_SLOTS * qa)}
    samples = []
    for last, n in zip(last_tokens, text_lens):
        raw = ([1] + rng.integers(3, 60, size=n).tolist()
               + [ids[t] for t in ("<video_start>", "<video>", "<video_end>",
                                   "<audio_start>", "<audio>", "<audio_end>")]
               + [int(last)])
        samples.append(expand_placeholders(raw, [IGNORE_INDEX] * len(raw), blocks))
    batch = left_pad_batch(samples, SEQ, cfg.pad_token_id)
    batch.pop("pad_left")
    b, size = len(samples), cfg.clip.vision.image_size
    batch["frames"] = rng.normal(size=(b, FRAME_SLOTS, 3, size, size)).astype(np.float32)
    batch["fbank"] = rng.normal(size=(b, AUDIO_SLOTS, FBANK_FRAMES, 128)).astype(np.float32)
    batch["is_avss"] = np.zeros(b, bool)
    batch["seg_frame"] = (np.arange(b) % FRAME_SLOTS).astype(np.int32)  # rows read different frame slots
    return batch


def make_base_model(cfg):
    model = Crab(cfg, rngs=nnx.Rngs(0))
    prepare_for_inference(model)
    return model


def make_random_model(base_model):
    """Large random output head: the argmax depends strongly on the whole context."""
    model = nnx.clone(base_model)
    head = model.llm.lm_head.weight
    head[...] = jax.random.normal(jax.random.key(3), head.shape)
    return model


def chain_model(base_model, chain):
    """A copy whose greedy continuation of ``chain[i]`` is ``chain[i + 1]`` whatever the context.

    Chain token ``i`` gets embedding ``CHAIN_SCALE * u_i`` (``u_i`` a basis vector), so the
    final-norm hidden state after it is ~``sqrt(d) * u_i``; the head column of ``chain[i + 1]``
    is ``10 * u_i`` and every other column is zero.
    """
    model = nnx.clone(base_model)
    d = model.cfg.llama.hidden_size
    assert len(chain) <= d
    emb = np.asarray(model.llm.model.embed_tokens.weight[...]).copy()
    head = np.zeros(model.llm.lm_head.weight.shape, np.float32)
    for i, tok in enumerate(chain):
        emb[tok] = 0.0
        emb[tok, i] = CHAIN_SCALE
        if i + 1 < len(chain):
            head[i, chain[i + 1]] = 10.0
    model.llm.model.embed_tokens.weight[...] = jnp.asarray(emb)
    model.llm.lm_head.weight[...] = jnp.asarray(head)
    return model


@nnx.jit
def reference_forward(model, batch, generated):
    """No-cache, teacher-forced Crab over prompt + ``generated [b, N]``.

    Attention is causal, so the logits at slot ``P - 1 + j`` are exactly those a from-scratch
    recomputation after ``j`` generated tokens gives: one call checks every step. Returns
    logits and hidden states ``[b, P + N, ...]`` and the CLIP taps ``[taps, b, T*P, W]``.
    """
    embeds, taps = D.encode_prompt(model, batch)
    n = generated.shape[1]
    embeds = jnp.concatenate([embeds, model.llm.model.embed_tokens(generated)], axis=1)
    mask = jnp.concatenate([batch["attention_mask"], jnp.ones(generated.shape, jnp.int32)], axis=1)
    last = batch["position_ids"][:, -1:]
    positions = jnp.concatenate([batch["position_ids"], last + 1 + jnp.arange(n)[None]], axis=1)
    logits, hidden = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                               return_hidden=True)
    return logits, hidden, taps


def frame_features(cfg, taps, seg_frame):
    """Each row's seg-tap CLIP tokens of frame ``seg_frame[i]``, sliced on the host: one ``[b, patches, W]``
    per seg tap (the reference of :meth:`Crab.seg_image_features` at inference)."""
    taps = np.asarray(taps)
    per_frame, patches = cfg.visual_qformer.tokens_per_frame, cfg.seg.image_embedding_size ** 2
    return [np.stack([taps[k, i, f * per_frame: f * per_frame + patches] for i, f in enumerate(seg_frame)])
            for k in cfg.seg_taps]


# Fixtures shared by the generation tests (import them into a test module to use them).
@pytest.fixture(scope="module")
def cfg():
    return tiny_crab_config()


@pytest.fixture(scope="module")
def base_model(cfg):
    return make_base_model(cfg)
