"""Causal self-attention with the Pallas TPU splash-attention kernel (``model.attention=splash``).

The kernel never materialises the ``[b, h, S, S]`` scores: it walks ``block`` x ``block`` tiles
of the causal triangle, skips the tiles above it, and keeps each query to the keys of its own
sample through ``segment_ids`` (a packed row's samples, 0 for padding; an unpacked row passes
its 0/1 padding mask, so padding attends only padding and no real token sees it). Logits and
the softmax run in float32 inside the kernel, like :func:`crab_jax.models.attention.dot_product_attention`'s
reference path, which the tests compare it against (on CPU through the kernel's interpreter).

The kernel is per sample and unaware of meshes: inside the trainer's
:func:`~crab_jax.parallel.sharding.activation_sharding` it runs under ``shard_map`` with the
batch and head axes split as the activation rules split them (each device attends its own
samples and heads), so XLA never gathers activations around the custom call.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from crab_jax.parallel.sharding import activation_spec

log = logging.getLogger("crab_jax.models")

# Tile edge of the kernel's blocks (queries and keys, forward and backward): the MXU-friendly
# size MaxText uses by default; a sequence must be a multiple of it.
BLOCK = 512
MIN_BLOCK = 128  # the smallest tile the TPU kernel takes

HEADS_AXES = ("activation_batch", "activation_length", "activation_heads", None)
KV_AXES = ("activation_batch", "activation_length", "activation_kv", None)
TOKENS_AXES = ("activation_batch", "activation_length")


def block_size(seq_len: int) -> int:
    """The tile edge for a sequence of ``seq_len`` (:data:`BLOCK`, or the largest power-of-two
    multiple of :data:`MIN_BLOCK` that divides it); ValueError when none does."""
    block = BLOCK
    while block >= MIN_BLOCK:
        if seq_len % block == 0:
            return block
        block //= 2
    raise ValueError(f"splash attention needs a sequence length that is a multiple of {MIN_BLOCK}, got {seq_len} "
                     "(config data.buckets / data.packing.seq_len), or model.attention=fused")


def splash_tiles(seq_len: int) -> bool:
    """Whether the kernel can tile ``seq_len``; when it cannot (a bucket that is no multiple of
    :data:`MIN_BLOCK`, e.g. a CPU demo's 112 tokens run on a TPU), the decoder takes the fused
    path for that shape and says so once."""
    if seq_len % MIN_BLOCK == 0:
        return True
    if seq_len not in _WARNED:
        _WARNED.add(seq_len)
        log.warning("model.attention=splash: %d tokens are no multiple of %d; this bucket uses the fused attention "
                    "(pick data.buckets / data.packing.seq_len in multiples of %d for the kernel)", seq_len,
                    MIN_BLOCK, MIN_BLOCK)
    return False


_WARNED: set[int] = set()


@functools.lru_cache(maxsize=None)
def _kernel(heads: int, seq_len: int, mqa: bool, interpret: bool):
    """The kernel of one sample: ``heads`` query heads (sharing one key / value head when ``mqa``)."""
    mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len)) for _ in range(heads)])
    b = block_size(seq_len)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    make = splash.make_splash_mqa_single_device if mqa else splash.make_splash_mha_single_device
    return make(mask, block_sizes=sizes, interpret=interpret)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, interpret: bool) -> jax.Array:
    """One device's share: q ``[b, s, h, d]`` (scaled), k / v ``[b, s, kvh, d]``, segment_ids
    ``[b, s]`` -> ``[b, s, h, d]``."""
    b, s, h, d = q.shape
    kvh = k.shape[2]
    groups = h // kvh
    qh = jnp.moveaxis(q, 1, 2)                      # [b, h, s, d]
    kh, vh = jnp.moveaxis(k, 1, 2), jnp.moveaxis(v, 1, 2)  # [b, kvh, s, d]
    ids = splash.SegmentIds(q=segment_ids, kv=segment_ids)
    if groups == 1:
        kernel = _kernel(h, s, False, interpret)
        out = jax.vmap(kernel)(qh, kh, vh, ids)
    else:  # grouped-query heads: one MQA call per key / value head
        kernel = _kernel(groups, s, True, interpret)
        per_kv = jax.vmap(kernel, in_axes=(0, 0, 0, None))      # over kv heads
        qg = qh.reshape(b, kvh, groups, s, d)
        out = jax.vmap(per_kv)(qg, kh, vh, ids).reshape(b, h, s, d)
    return jnp.moveaxis(out, 2, 1)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
                     scale: float | None = None, interpret: bool | None = None) -> jax.Array:
    """Causal attention within segments.

    Args:
      q: ``[b, s, h, d]``; k, v: ``[b, s, kvh, d]`` (``h % kvh == 0``, HF's head grouping).
      segment_ids: ``[b, s]`` int: a query attends keys at or before it with its segment id.
      scale: multiplies ``q.k`` (default ``1 / sqrt(d)``).
      interpret: run the kernel in Pallas' interpreter, for tests on CPU (default: when the target
        is not a TPU: the trainer's mesh devices, else the default backend).
    Returns:
      ``[b, s, h, d]`` in ``v``'s dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    found = activation_spec(q.shape, HEADS_AXES)
    if interpret is None:  # the target's platform: the mesh's (an AOT compile for TPU on a CPU host) or the backend
        platform = found[0].devices.flat[0].platform if found is not None else jax.default_backend()
        interpret = platform != "tpu"
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    segment_ids = segment_ids.astype(jnp.int32)
    body = functools.partial(_attend, interpret=interpret)
    if found is None:
        return body(q, k, v, segment_ids).astype(v.dtype)
    mesh, q_spec = found
    kv_spec = activation_spec(k.shape, KV_AXES)[1]
    if q_spec[2] != kv_spec[2]:  # each device must hold its query heads' key / value heads
        raise ValueError(f"splash attention: query heads sharded as {q_spec[2]!r} but key / value heads as "
                         f"{kv_spec[2]!r} ({q.shape[2]} / {k.shape[2]} heads); change the activation_heads / "
                         "activation_kv rules or use model.attention=fused")
    ids_spec = PartitionSpec(q_spec[0], q_spec[1])
    out = jax.shard_map(body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, ids_spec), out_specs=q_spec,
                        check_vma=False)(q, k, v, segment_ids)
    return out.astype(v.dtype)
