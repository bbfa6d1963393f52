"""Multi-head scaled dot-product attention: the one implementation every component uses.

``softmax(q k^T * scale + bias, masked) v`` with the logits and the softmax in float32 (the
q.k contraction runs in the inputs' dtype and is cast before scaling), probabilities cast
back to ``v``'s dtype. What differs between components is passed in, never re-written:

* LLaMA: grouped-query heads (``kv_heads < heads``), rotary embedding applied to the split
  heads by the caller, a causal + padding ``mask``, a KV cache around the call;
* BEATs: its gated relative position bias is an additive ``bias`` on the logits;
* CLIP, the Q-Former, SAM's two-way transformer, the query generator: plain attention
  (their masks are all ones, so none is passed).

Shapes: ``b`` batch, ``q_len`` / ``kv_len`` sequence lengths, ``h`` query heads, ``kvh``
key/value heads, ``d`` head width. Projected activations are ``[b, s, h*d]``; split ones are
``[b, s, h, d]``.

Modules here keep torch's parameter names: :class:`ProjectedAttention` is the
``q_proj / k_proj / v_proj / out_proj`` block of HF CLIP, BEATs and SAM; :class:`MultiheadAttention`
is torch's ``nn.MultiheadAttention`` with its packed ``in_proj_weight``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.layers import Linear, zeros_init
from crab_jax.parallel.sharding import param


# How attention computes (``model.attention``): ``reference`` is the einsum path of
# :func:`dot_product_attention` (fp32 logits and softmax; what the parity tests pin), ``fused`` is
# ``jax.nn.dot_product_attention`` (XLA's fused attention; cuDNN flash attention on GPU where the
# shapes allow), ``splash`` the Pallas TPU kernel of :mod:`crab_jax.models.splash_attention` for the
# LLM's causal self-attention (training forwards; decoding with a KV cache and the encoders use
# ``fused``); ``auto`` = splash on TPU, fused on GPU, reference on CPU.
ATTENTION_IMPLEMENTATIONS = ("auto", "reference", "fused", "splash")


def resolve_attention(name: str, backend: str | None = None) -> str:
    """``auto`` -> ``splash`` on TPU, ``fused`` on GPU, ``reference`` on CPU; other names checked."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"config model.attention={name!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
    if name != "auto":
        return name
    return {"cpu": "reference", "tpu": "splash"}.get(backend or jax.default_backend(), "fused")


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """``[b, s, h*d] -> [b, s, h, d]``."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: jax.Array) -> jax.Array:
    """``[b, s, h, d] -> [b, s, h*d]``."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    probs_dropout: Callable[[jax.Array], jax.Array] | None = None,
    implementation: str = "reference",
) -> jax.Array:
    """Scaled dot-product attention over split heads, logits and softmax in float32; GQA.

    Args:
      q: ``[b, q_len, h, d]``.
      k, v: ``[b, kv_len, kvh, d]`` with ``h % kvh == 0`` (query head ``i`` reads kv head
        ``i // (h // kvh)``, HF's ``repeat_kv`` order).
      mask: boolean, broadcastable to ``[b, h, q_len, kv_len]``; False = may not attend.
      bias: additive float, broadcastable to ``[b, h, q_len, kv_len]``, added after scaling.
      scale: multiplies ``q.k``; default ``1 / sqrt(d)``.
      probs_dropout: applied to the probabilities ``[b, h, q_len, kv_len]`` before they weight
        ``v`` (BERT's attention dropout; None: none).
      implementation: ``reference`` or ``fused`` (:data:`ATTENTION_IMPLEMENTATIONS`; resolved, not
        ``auto``). ``fused`` never materialises the ``[b, h, q_len, kv_len]`` probabilities where
        the backend has a kernel, so it takes no ``probs_dropout``.
    Returns:
      ``[b, q_len, h, d]`` in ``v``'s dtype.
    """
    if implementation == "splash":  # the kernel is the LLM's (causal, segments); elsewhere the fused path
        implementation = "fused"
    if implementation == "fused":
        if probs_dropout is not None:
            raise ValueError("fused attention takes no probs_dropout (use implementation='reference')")
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias, mask=mask, scale=scale)
        return out.astype(v.dtype)
    if implementation != "reference":
        raise ValueError(f"attention implementation {implementation!r}; expected 'reference' or 'fused'")
    b, tq, h, d = q.shape
    kvh = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    groups = h // kvh
    # Key / value heads repeated for grouped queries (HF's repeat_kv order): plain four-index
    # contractions, which XLA:CPU lays out far better than a five-index grouped einsum.
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bshd->bhqs", q, k).astype(jnp.float32) * scale
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    # Softmax with the normalisation deferred past the value product: ``exp(s - max) v / sum``
    # divides [b, q_len, h, d] instead of [b, h, q_len, kv_len] (the same numbers up to fp32
    # rounding). XLA:CPU runs it much faster than jax.nn.softmax followed by the einsum at CLIP's
    # 257-token, 8-wide heads (docs/benchmarks.md, "The reference path on XLA:CPU").
    peak = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    weights = jnp.exp(scores - peak)                                   # [b, h, q_len, kv_len]
    denom = jnp.sum(weights, axis=-1)                                  # [b, h, q_len]
    weights = weights.astype(v.dtype)
    if probs_dropout is not None:  # elementwise mask and rescale: commutes with the division
        weights = probs_dropout(weights)
    out = jnp.einsum("bhqs,bshd->bhqd", weights, v).astype(jnp.float32) / denom[..., None]
    return jnp.swapaxes(out, 1, 2).astype(v.dtype)                     # [b, q_len, h, d]


def multi_head_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    num_heads: int,
    *,
    num_kv_heads: int | None = None,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    probs_dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """:func:`dot_product_attention` on projected activations.

    ``q [b, q_len, h*d]``, ``k, v [b, kv_len, kvh*d]`` (``kvh = num_kv_heads``, default ``h``)
    ``-> [b, q_len, h*d]``; ``mask`` / ``bias`` / ``scale`` / ``probs_dropout`` as in
    :func:`dot_product_attention`.
    """
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    out = dot_product_attention(split_heads(q, num_heads), split_heads(k, kv_heads), split_heads(v, kv_heads),
                                mask=mask, bias=bias, scale=scale, probs_dropout=probs_dropout)
    return merge_heads(out)


class ProjectedAttention(nnx.Module):
    """``q_proj``, ``k_proj``, ``v_proj`` (width ``dim`` -> ``internal_dim``) and ``out_proj`` back.

    HF ``CLIPAttention`` and BEATs' ``MultiheadAttention`` (``internal_dim = dim``) and SAM's
    ``Attention`` (``internal_dim = dim // downsample_rate``); all projections with bias.
    ``kv_axis`` is the logical axis of the key / value projections' output (``"kv"`` for CLIP,
    ``"heads"`` where the original shards them like the queries).
    """

    def __init__(self, dim: int, num_heads: int, *, internal_dim: int | None = None, kv_axis: str = "kv",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        internal = dim if internal_dim is None else internal_dim
        if internal % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {internal}")
        self.num_heads = num_heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(dim, internal, axes=("embed", "heads"), **kw)
        self.k_proj = Linear(dim, internal, axes=("embed", kv_axis), **kw)
        self.v_proj = Linear(dim, internal, axes=("embed", kv_axis), **kw)
        self.out_proj = Linear(internal, dim, axes=("heads", "embed"), **kw)

    def heads(self, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projects and splits: ``[b, s, dim]`` each -> ``[b, s, h, internal/h]`` each."""
        return (split_heads(self.q_proj(q), self.num_heads), split_heads(self.k_proj(k), self.num_heads),
                split_heads(self.v_proj(v), self.num_heads))

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
               bias: jax.Array | None = None) -> jax.Array:
        """Split heads (from :meth:`heads`) -> attention -> ``out_proj``: ``[b, q_len, dim]``."""
        return self.out_proj(merge_heads(dot_product_attention(q, k, v, mask=mask, bias=bias)))

    def __call__(self, q: jax.Array, k: jax.Array | None = None, v: jax.Array | None = None) -> jax.Array:
        """``q [b, q_len, dim]``, ``k [b, kv_len, dim]`` (default ``q``), ``v`` (default ``k``)
        ``-> [b, q_len, dim]``."""
        k = q if k is None else k
        v = k if v is None else v
        return self.attend(*self.heads(q, k, v))


class MultiheadAttention(nnx.Module):
    """torch ``nn.MultiheadAttention`` (batch_first) with the packed ``in_proj_weight``.

    ``in_proj_weight`` is kept packed, transposed to ``[C, 3C]`` (columns: query, key, value)
    and ``in_proj_bias`` ``[3C]``; the converter only transposes.
    """

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        self.dim, self.num_heads = dim, num_heads
        xavier = jax.nn.initializers.xavier_uniform()
        self.in_proj_weight = param(xavier, rngs.params(), (dim, 3 * dim), ("embed", "heads"))
        self.in_proj_bias = param(zeros_init, rngs.params(), (3 * dim,), ("heads",))
        self.out_proj = Linear(dim, dim, axes=("heads", "embed"), rngs=rngs)

    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
        """query ``[b, q_len, C]``, key/value ``[b, kv_len, C]`` -> ``[b, q_len, C]``."""
        w = self.in_proj_weight[...].reshape(self.dim, 3, self.dim)
        b = self.in_proj_bias[...].reshape(3, self.dim)
        out = multi_head_attention(query @ w[:, 0] + b[0], key @ w[:, 1] + b[1], value @ w[:, 2] + b[2],
                                   self.num_heads)
        return self.out_proj(out)
