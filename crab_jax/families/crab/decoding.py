"""Pure, jit-able text (+ mask) generation for :class:`~crab_jax.families.crab.model.Crab`.

Input: a left-padded *prompt* batch in the :mod:`crab_jax.families.crab.batch_spec` format
(``input_ids, attention_mask, position_ids, media_index [b, P]``, ``frames``, ``fbank``,
optionally ``is_avss [b]``, ``seg_frame [b]`` (default 0) and ``fbank_valid [b, A]`` (default:
every fbank frame real)); labels / masks are not read. Output: :class:`Generation`.

Shapes are static: the KV cache holds ``P + max_new_tokens`` slots, so there is one compile
per ``(b, P, media shapes, DecodeConfig)`` whatever the prompts are. Steps:

1. prefill: media encoded and spliced exactly as in training (:meth:`Crab.embed`), one LLM
   call over the ``P`` prompt slots writes cache slots ``[0, P)``;
2. decode, ``jax.lax.while_loop`` of at most ``max_new_tokens`` steps (it leaves early once
   every sample has emitted EOS): step ``j`` picks token ``g_j`` from the current logits,
   then feeds it at cache slot ``P + j`` with position ``last_prompt_position + 1 + j``
   (positions continue each sample's own count, whatever its left padding). After EOS a
   sample emits the pad id and its length stops growing.

Mask tokens (spec A.5, inference): every generated ``g_j`` whose id is a ``<mask_k>`` is
flagged; its prompt vector is the last-layer hidden state of **step j** (the state whose
logits chose ``g_j``: the last prompt slot for ``j = 0``, else the state at input
``g_{j-1}``). That is the training rule ``mask_position_offset = -1`` (the state one position
before each mask token); with ``mask_position_offset = 0`` the state at input ``g_j`` itself
is taken instead. Flags are kept in a rolling buffer, so more than ``n_mask`` flags keep the
**last** ``n_mask``; fewer than ``n_mask`` means no valid mask (``mask_valid`` False: the
original skips such samples). The seg module then runs on those vectors and the CLIP taps of
frame ``seg_frame`` (the record's ``<image>``; never zeroed here: at inference nothing says a
sample is "not segmentation").
"""

from __future__ import annotations

import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.families.crab.model import Crab
from crab_jax.models.llama import KVCache
from crab_jax.models.decoding import TRACES, DecodeConfig, bound_to_model, push, select_tokens

PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "media_index", "frames", "fbank")
OPTIONAL_PROMPT_KEYS = ("is_avss", "seg_frame", "fbank_valid")  # default: not AVSS, frame slot 0, all real



class Generation(NamedTuple):
    """What :func:`generate` returns (``b`` samples, ``N = max_new_tokens``, ``n = n_mask``).

    tokens: ``[b, N]`` int32, generated ids, ``pad_token_id`` after EOS.
    lengths: ``[b]`` int32, generated tokens up to and including EOS.
    finished: ``[b]`` bool, EOS was emitted.
    mask_embeddings: ``[b, n, d]`` float32, hidden states of the last ``n`` mask tokens
      (see the module docstring; zeros where fewer than ``n`` were generated).
    mask_steps: ``[b, n]`` int32, decode step ``j`` of each of those mask tokens (-1 = none).
    mask_count: ``[b]`` int32, mask tokens generated.
    mask_valid: ``[b]`` bool, ``mask_count >= n`` (a mask can be produced).
    binary_logits: ``[b, 1, H, W]`` float32 or None (no seg module / ``with_masks`` off).
    avss_logits: ``[b, K, H, W]`` float32 or None.
    pred_masks: ``[b, H, W]`` int32 or None: ``sigmoid(binary) > 0.5`` (0/1), or the AVSS
      class ``argmax`` where ``is_avss``.
    """

    tokens: jax.Array
    lengths: jax.Array
    finished: jax.Array
    mask_embeddings: jax.Array
    mask_steps: jax.Array
    mask_count: jax.Array
    mask_valid: jax.Array
    binary_logits: jax.Array | None
    avss_logits: jax.Array | None
    pred_masks: jax.Array | None


# ----------------------------------------------------------------------------- the decoder


class _Carry(NamedTuple):
    step: jax.Array         # [] int32
    logits: jax.Array       # [b, V] logits that choose the next token
    hidden: jax.Array       # [b, d] hidden state that produced them
    cache: KVCache
    tokens: jax.Array       # [b, N]
    done: jax.Array         # [b]
    lengths: jax.Array      # [b]
    mask_buf: jax.Array     # [b, n, d]
    mask_steps: jax.Array   # [b, n]
    mask_count: jax.Array   # [b]
    rng: jax.Array


def prompt_seg_frame(batch: Mapping[str, jax.Array]) -> jax.Array:
    """``[b]`` int32: the frame slot each sample's masks are decoded on (``seg_frame``, default 0)."""
    seg_frame = batch.get("seg_frame")
    b = batch["input_ids"].shape[0]
    return jnp.zeros((b,), jnp.int32) if seg_frame is None else jnp.asarray(seg_frame, jnp.int32)


def encode_prompt(model: Crab, batch: Mapping[str, jax.Array], with_masks: bool = True
                  ) -> tuple[jax.Array, jax.Array]:
    """Spliced ``inputs_embeds [b, P, d]`` and the CLIP taps ``[taps, b, T*patches, W]`` (under
    ``frame_chunk``, the taps of :func:`prompt_seg_frame` are encoded only ``with_masks``)."""
    media_rows, taps = model.encode_media(batch, prompt_seg_frame(batch) if with_masks else None)
    return model.embed(batch["input_ids"], media_rows, batch["media_index"]), taps


def generate(model: Crab, batch: Mapping[str, jax.Array], dcfg: DecodeConfig,
             rng: jax.Array | None = None) -> Generation:
    """Generates up to ``dcfg.max_new_tokens`` tokens for a left-padded prompt batch (traceable).

    Args:
      model: a Crab in eval mode (dropout off) with router-gate recording off.
      batch: prompt batch (see the module docstring); every row's last slot must be a real
        token (left padding), as :func:`crab_jax.data.text.sequence.left_pad_batch` makes it.
      dcfg: :class:`DecodeConfig`.
      rng: a PRNG key (sampling only; greedy ignores it).
    Returns:
      :class:`Generation`.
    """
    missing = [k for k in PROMPT_KEYS if k not in batch]
    if missing:
        raise KeyError(f"generate: prompt batch lacks {missing} (expected the crab_jax.families.crab.batch_spec keys "
                       f"{PROMPT_KEYS})")
    cfg = model.cfg
    llm = model.llm
    b, p = batch["input_ids"].shape
    n_new = dcfg.max_new_tokens
    mask_ids = jnp.asarray(cfg.mask_token_ids or (-1,), jnp.int32)
    n_mask = len(cfg.mask_token_ids)
    if cfg.mask_position_offset not in (-1, 0):
        raise NotImplementedError(f"CrabConfig.mask_position_offset={cfg.mask_position_offset}: generation "
                                  "supports -1 (original) and 0")
    rng = jax.random.key(0) if rng is None else rng
    with_masks = bool(dcfg.with_masks and model.seg_module is not None and n_mask)

    embeds, taps = encode_prompt(model, batch, with_masks)
    prompt_mask = batch["attention_mask"].astype(jnp.int32)
    # Every generated slot is attended once written; slots not written yet are blocked by causality.
    full_mask = jnp.concatenate([prompt_mask, jnp.ones((b, n_new), jnp.int32)], axis=1)
    cache = KVCache.init(cfg.llama, b, p + n_new)
    logits, hidden, cache = llm(inputs_embeds=embeds, attention_mask=full_mask,
                                position_ids=batch["position_ids"].astype(jnp.int32), cache=cache,
                                return_hidden=True)
    last_position = batch["position_ids"][:, -1].astype(jnp.int32)
    d = hidden.shape[-1]

    def cond(c: _Carry):
        return (c.step < n_new) & ~jnp.all(c.done)

    def body(c: _Carry) -> _Carry:
        rng, key = jax.random.split(c.rng)
        token = select_tokens(c.logits, key, dcfg)
        live = ~c.done
        token = jnp.where(live, token, dcfg.pad_token_id)
        tokens = jax.lax.dynamic_update_slice(c.tokens, token[:, None], (0, c.step))
        done = c.done | (token == dcfg.eos_token_id)
        lengths = c.lengths + live.astype(jnp.int32)
        # Feed the token: cache slot p + step, position continuing the sample's own count.
        positions = (last_position + 1 + c.step)[:, None]
        emb = llm.model.embed_tokens(token[:, None])
        logits, hidden, cache = llm(inputs_embeds=emb, attention_mask=full_mask, position_ids=positions,
                                    cache=c.cache, return_hidden=True)
        flag = live & jnp.isin(token, mask_ids) & (n_mask > 0)
        prompt_vec = c.hidden if cfg.mask_position_offset == -1 else hidden[:, 0]
        return _Carry(c.step + 1, logits[:, 0], hidden[:, 0], cache, tokens, done, lengths,
                      push(c.mask_buf, prompt_vec.astype(jnp.float32), flag),
                      push(c.mask_steps, jnp.full((b,), c.step, jnp.int32), flag),
                      c.mask_count + flag.astype(jnp.int32), rng)

    init = _Carry(jnp.zeros((), jnp.int32), logits[:, -1], hidden[:, -1], cache,
                  jnp.full((b, n_new), dcfg.pad_token_id, jnp.int32), jnp.zeros((b,), bool),
                  jnp.zeros((b,), jnp.int32), jnp.zeros((b, n_mask, d), jnp.float32),
                  jnp.full((b, n_mask), -1, jnp.int32), jnp.zeros((b,), jnp.int32), rng)
    out = jax.lax.while_loop(cond, body, init)
    mask_valid = out.mask_count >= n_mask if n_mask else jnp.zeros((b,), bool)

    binary = avss = pred = None
    if with_masks:
        is_avss = batch.get("is_avss")
        is_avss = jnp.zeros((b,), bool) if is_avss is None else jnp.asarray(is_avss, bool)
        features = model.seg_image_features(taps, jnp.ones((b,), bool), prompt_seg_frame(batch))
        seg = model.seg_module(out.mask_buf, [f.astype(jnp.float32) for f in features], is_avss)
        binary, avss = seg.binary_logits, seg.avss_logits
        pred = jnp.where(is_avss[:, None, None], jnp.argmax(avss, axis=1),
                         (binary[:, 0] > 0).astype(jnp.int32)).astype(jnp.int32)
    return Generation(out.tokens, out.lengths, out.done, out.mask_buf, out.mask_steps, out.mask_count,
                      mask_valid, binary, avss, pred)


# ----------------------------------------------------------------------------- jit edge


@functools.partial(nnx.jit, static_argnames=("dcfg",))
def _generate_jit(model: Crab, batch, rng, *, dcfg: DecodeConfig) -> Generation:
    TRACES[(batch["input_ids"].shape, dcfg.max_new_tokens)] += 1
    return generate(model, batch, dcfg, rng)


def jit_generate(model: Crab, batch: Mapping[str, jax.Array], dcfg: DecodeConfig,
                 rng: jax.Array | None = None) -> Generation:
    """:func:`generate` compiled once per (model graph, batch shapes, ``dcfg``).

    ``model`` is put in inference mode and its graph walked at its first call
    (:func:`~crab_jax.models.decoding.bound_to_model`: weights updated in place are seen, a
    changed structure is not); only the :data:`PROMPT_KEYS` (and those of
    :data:`OPTIONAL_PROMPT_KEYS` it has) of ``batch`` are passed to the device.
    """
    keys = PROMPT_KEYS + tuple(k for k in OPTIONAL_PROMPT_KEYS if k in batch)
    prompt = {k: jnp.asarray(batch[k]) for k in keys}
    rng = jax.random.key(0) if rng is None else rng
    return bound_to_model(_generate_jit, model)(prompt, rng, dcfg=dcfg)
