"""Pure, jit-able generation for :class:`~crab_jax.families.crab_plus.model.CrabPlusThinker`.

Input: a prompt batch in the :mod:`crab_jax.families.crab_plus.layout` format (``input_ids,
attention_mask, media_index [b, P]``, ``position_ids [b, 3, P]``, ``rope_deltas [b, 1]``, the
media arrays). The KV cache holds ``P + max_new_tokens`` slots: one compile per (batch
shapes, :class:`DecodeConfig`).

1. prefill: media encoded and spliced as in training, one decoder call over the ``P`` slots;
   the first token is chosen from the logits at slot ``P - 1`` of every row;
2. decode (``lax.while_loop``, leaves once every row emitted EOS): step ``j`` feeds its token
   at cache slot ``P + j`` with position ``P + j + rope_deltas`` on all three streams (the
   original's ``cache_position + rope_deltas``). Finished rows emit the pad id.

Padding side: the original right-pads (``DataCollatorForOmniTestDataset``), so a shorter
row's first token comes from the logits at a *pad* slot (pads attend to the valid tokens
before them) and its answer is generated after its pads — a quirk the fixtures record. With
left-padded prompts every row's last slot is real and each row generates as it would alone;
the same position rule serves both, because ``rope_deltas`` subtracts the pad count.
"""

from __future__ import annotations

import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.families.crab_plus.model import CrabPlusThinker, stream_major
from crab_jax.models.decoding import TRACES, DecodeConfig, bound_to_model, select_tokens
from crab_jax.models.llama import KVCache

PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "rope_deltas")
MEDIA_KEYS = ("media_index", "pixel_slices", "audio_chunks", "audio_chunk_frames", "audio_pool_index")


class Generation(NamedTuple):
    """``b`` rows, ``N = max_new_tokens``.

    tokens: ``[b, N]`` int32, pad after EOS. lengths: ``[b]`` tokens up to and including EOS.
    finished: ``[b]`` EOS emitted. step_logits: ``[N, b, V]`` float32 logits that chose each
    token (only with ``keep_logits``; else None).
    """

    tokens: jax.Array
    lengths: jax.Array
    finished: jax.Array
    step_logits: jax.Array | None


class _Carry(NamedTuple):
    step: jax.Array
    logits: jax.Array  # [b, V]
    cache: KVCache
    tokens: jax.Array
    done: jax.Array
    lengths: jax.Array
    step_logits: jax.Array  # [N, b, V] or [0, b, V]
    rng: jax.Array


def generate(model: CrabPlusThinker, batch: Mapping[str, jax.Array], dcfg: DecodeConfig,
             rng: jax.Array | None = None, *, keep_logits: bool = False) -> Generation:
    """Generates up to ``dcfg.max_new_tokens`` tokens (traceable; see the module docstring)."""
    missing = [k for k in PROMPT_KEYS if k not in batch]
    if missing:
        raise KeyError(f"generate: prompt batch lacks {missing} (crab_jax.families.crab_plus.layout keys)")
    cfg = model.cfg
    b, p = batch["input_ids"].shape
    n_new = dcfg.max_new_tokens
    rng = jax.random.key(0) if rng is None else rng
    embeds = model.embed(batch["input_ids"], model.media_rows(batch), batch.get("media_index"))
    full_mask = jnp.concatenate([batch["attention_mask"].astype(jnp.int32), jnp.ones((b, n_new), jnp.int32)], axis=1)
    cache = KVCache.init(cfg.text, b, p + n_new)
    logits, _, cache = model.decode(embeds, full_mask, stream_major(batch["position_ids"]), cache)
    deltas = batch["rope_deltas"].reshape(b).astype(jnp.int32)

    def cond(c: _Carry):
        return (c.step < n_new) & ~jnp.all(c.done)

    def body(c: _Carry) -> _Carry:
        rng, key = jax.random.split(c.rng)
        live = ~c.done
        token = jnp.where(live, select_tokens(c.logits, key, dcfg), dcfg.pad_token_id)
        tokens = jax.lax.dynamic_update_slice(c.tokens, token[:, None], (0, c.step))
        kept = c.step_logits
        if keep_logits:
            kept = jax.lax.dynamic_update_slice(kept, c.logits[None], (c.step, 0, 0))
        position = jnp.broadcast_to((p + c.step + deltas)[None, :, None], (3, b, 1))
        emb = model.embed(token[:, None], None, None)
        logits, _, cache = model.decode(emb, full_mask, position, c.cache)
        return _Carry(c.step + 1, logits[:, 0], cache, tokens, c.done | (token == dcfg.eos_token_id),
                      c.lengths + live.astype(jnp.int32), kept, rng)

    vocab = logits.shape[-1]
    init = _Carry(jnp.zeros((), jnp.int32), logits[:, -1], cache, jnp.full((b, n_new), dcfg.pad_token_id, jnp.int32),
                  jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
                  jnp.zeros((n_new if keep_logits else 0, b, vocab), jnp.float32), rng)
    out = jax.lax.while_loop(cond, body, init)
    return Generation(out.tokens, out.lengths, out.done, out.step_logits if keep_logits else None)


@functools.partial(nnx.jit, static_argnames=("dcfg", "keep_logits"))
def _generate_jit(model: CrabPlusThinker, batch, rng, *, dcfg: DecodeConfig, keep_logits: bool) -> Generation:
    TRACES[(batch["input_ids"].shape, dcfg.max_new_tokens)] += 1
    return generate(model, batch, dcfg, rng, keep_logits=keep_logits)


def jit_generate(model: CrabPlusThinker, batch: Mapping[str, jax.Array], dcfg: DecodeConfig,
                 rng: jax.Array | None = None, *, keep_logits: bool = False) -> Generation:
    """:func:`generate` compiled once per (model graph, batch shapes, ``dcfg``), in inference mode
    (the model bound at its first call: :func:`~crab_jax.models.decoding.bound_to_model`)."""
    prompt = {k: jnp.asarray(batch[k]) for k in PROMPT_KEYS + MEDIA_KEYS if k in batch}
    rng = jax.random.key(0) if rng is None else rng
    return bound_to_model(_generate_jit, model)(prompt, rng, dcfg=dcfg, keep_logits=keep_logits)
