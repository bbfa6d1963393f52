"""Decoding pieces every family's generator shares: settings, token choice, a rolling buffer.

A family's ``generate`` (e.g. :func:`crab_jax.families.crab.decoding.generate`) runs the
prefill and the ``lax.while_loop`` over its own model; these are the parts that do not
depend on the model: :class:`DecodeConfig` (hashable, a static argument of the jitted
generator), :func:`select_tokens` (greedy / temperature / top-k / top-p), :func:`push`
(a fixed-size buffer that keeps the last ``n`` flagged values),
:func:`prepare_for_inference` (eval mode, no router-gate sowing), :func:`bound_to_model` (a
jitted generator with the model's graph walked once), and the host side:
:class:`PromptBatch` (a training batch cut to its prompts), :func:`generated_ids`, :func:`decode_texts`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.ilora import record_router_gates

# Trace count of jitted generators per (batch shape, max_new_tokens); tests and logs read it.
TRACES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to decode (hashable: a static argument of the jitted generator).

    Attributes:
      max_new_tokens: ``N``, generated slots (500 for Crab's text tasks, 100 for AVS).
      eos_token_id: stops a sample (``</s>`` = 2 for LLaMA).
      pad_token_id: written after EOS.
      temperature: 0 = greedy (argmax); > 0 samples from ``softmax(logits / temperature)``.
      top_k: with sampling, keep the ``k`` most likely tokens (0 = all).
      top_p: with sampling, keep the smallest set of tokens whose mass reaches ``top_p`` (1 = all).
      with_masks: run the seg module on generated mask tokens (ignored without a seg module).
    """

    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    with_masks: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"DecodeConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"DecodeConfig.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"DecodeConfig.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"DecodeConfig.top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def select_tokens(logits: jax.Array, rng: jax.Array, dcfg: DecodeConfig) -> jax.Array:
    """``[b, V]`` float32 logits -> ``[b]`` int32 ids (greedy, or temperature / top-k / top-p sampling)."""
    if dcfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / dcfg.temperature
    neg = jnp.finfo(jnp.float32).min
    if 0 < dcfg.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, dcfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if dcfg.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # A token is kept while the mass strictly before it is < top_p (the first always is).
        keep = (jnp.cumsum(probs, axis=-1) - probs) < dcfg.top_p
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def push(buf: jax.Array, value: jax.Array, flag: jax.Array) -> jax.Array:
    """Rolling buffer ``[b, n, ...]``: where ``flag``, drop the oldest entry and append ``value``."""
    if buf.shape[1] == 0:
        return buf
    rolled = jnp.concatenate([buf[:, 1:], value[:, None].astype(buf.dtype)], axis=1)
    return jnp.where(flag.reshape((-1,) + (1,) * (buf.ndim - 1)), rolled, buf)


def prepare_for_inference(model: nnx.Module) -> nnx.Module:
    """Eval mode (dropout off) and no router-gate sowing (a decode loop must not write state)."""
    model.eval()
    record_router_gates(model, False)
    return model


# jitted generator -> (the model last bound to it, the bound generator). One model per generator
# is kept: the bound function holds its model, so a cache keyed on models would keep every model
# it ever saw alive; binding another model releases the previous one.
_BOUND: dict[Callable, tuple[nnx.Module, Callable]] = {}


def bound_to_model(jitted: Callable, model: nnx.Module) -> Callable:
    """``jitted`` (an ``nnx.jit`` function of ``(model, ...)``) with ``model`` bound, in inference mode.

    ``nnx.jit`` walks the model's graph on every call, to split it into arrays and to merge
    them back (with :func:`prepare_for_inference` before it, about half the tiny Crab's time
    to first token: ``benchmarks/vs_torch.py``'s median went from 235 to 123 ms). Here the graph is walked once (flax's
    ``nnx.cached_partial``) and the model put in inference mode once, for as long as ``model``
    is the one last bound to ``jitted``. Weights written in place (``nnx.update``,
    ``variable[...] = x``) are seen by later calls; a model whose structure changes after its
    first call (a Variable or submodule replaced, a static attribute such as ``cfg`` or the
    train / eval mode changed) keeps the graph of that call: build a new model object, or call
    :func:`unbind` first.
    """
    entry = _BOUND.get(jitted)
    if entry is not None and entry[0] is model:
        return entry[1]
    prepare_for_inference(model)
    fn = nnx.cached_partial(jitted, model)
    _BOUND[jitted] = (model, fn)
    return fn


def unbind(model: nnx.Module) -> None:
    """Forgets the generators bound to ``model`` (the next call walks its graph again)."""
    for jitted in [j for j, (m, _) in _BOUND.items() if m is model]:
        del _BOUND[jitted]


# ----------------------------------------------------------------------------- host side


@dataclasses.dataclass
class PromptBatch:
    """A prompt-only batch and what was cut off.

    Attributes:
      batch: same keys and shapes as the input; answer slots removed, each row left-padded
        again (``labels`` all -100).
      answers: per row, the reference answer ids (``[n_i]`` int32, EOS included), empty for
        rows without labels (fillers).
      has_answer: ``[b]`` bool.
    """

    batch: dict[str, np.ndarray]
    answers: list[np.ndarray]
    has_answer: np.ndarray


def exact_match(generated: np.ndarray, reference: np.ndarray, eos_id: int) -> float:
    """1.0 when the two id sequences agree up to their first ``eos_id`` (EOS and after ignored)."""
    def upto_eos(ids):
        ids = np.asarray(ids)
        hits = np.flatnonzero(ids == eos_id)
        return ids[: hits[0]] if len(hits) else ids

    return float(np.array_equal(upto_eos(generated), upto_eos(reference)))


def generated_ids(gen_tokens: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Per row, the generated ids up to and including EOS."""
    return [np.asarray(gen_tokens[i, : int(lengths[i])]) for i in range(len(lengths))]


def decode_texts(tokenizer, sequences: Sequence[np.ndarray]) -> list[str]:
    """Ids -> text as the original decodes (``skip_special_tokens=False``; parsers strip markers).

    Without a tokenizer the ids are written space-separated (``"<id:17> <id:5>"``), which no
    task parser matches: only the generic metrics score then.
    """
    if tokenizer is None:
        return [" ".join(f"<id:{int(t)}>" for t in seq) for seq in sequences]
    return [tokenizer.decode([int(t) for t in seq], skip_special_tokens=False) for seq in sequences]
