"""Next-token cross-entropy with the label convention every family shares.

Labels are the input ids shifted by the data pipeline's convention: position ``t``'s logits
predict label ``t + 1``, and :data:`IGNORE_INDEX` marks slots that are not predicted (prompt,
media, padding), as in the HF / original code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def token_nll(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-position NLL ``[b, S-1]`` (0 where not predicted) and the predicted-slot mask ``[b, S-1]``.

    ``logits [b, S, V]`` (any float dtype, reduced in float32), ``labels [b, S]`` int.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    logp = jax.nn.log_softmax(logits, axis=-1)
    # The target's log-probability by a one-hot select (one nonzero term: exact), not a gather,
    # whose gradient would be a scatter-add into [b, S, V] (slow on XLA:CPU, serialised on TPU).
    is_target = jnp.where(valid, targets, 0)[..., None] == jnp.arange(logits.shape[-1])
    nll = -jnp.sum(jnp.where(is_target, logp, 0.0), axis=-1)
    return jnp.where(valid, nll, 0.0), valid


def lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the predicted slots (scalar)."""
    return lm_loss_from_sums(*per_sample_lm_sums(logits, labels))


def lm_loss_from_sums(nll_sums: jax.Array, token_counts: jax.Array) -> jax.Array:
    """The mean next-token cross-entropy (scalar) from :func:`per_sample_lm_sums`' ``[b]`` sums, so
    a training forward computes the ``[b, S, V]`` log-softmax once for the loss and its per-task logs."""
    return jnp.sum(nll_sums) / jnp.maximum(jnp.sum(token_counts), 1.0)


def per_sample_lm_sums(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next-token NLL summed per sample ``[b]`` and the number of predicted tokens ``[b]``."""
    nll, valid = token_nll(logits, labels)
    return jnp.sum(nll, axis=1), valid.sum(1).astype(jnp.float32)


def per_segment_lm_sums(logits: jax.Array, labels: jax.Array, segment_ids: jax.Array,
                        num_segments: int) -> tuple[jax.Array, jax.Array]:
    """:func:`per_sample_lm_sums` of packed rows: ``[b, P]`` NLL sums and predicted tokens of each
    row's ``P = num_segments`` samples (``segment_ids [b, S]``: ``k >= 1`` for the ``k``-th sample,
    0 for padding). A prediction belongs to the sample of its target token (position ``t + 1``)."""
    nll, valid = token_nll(logits, labels)
    owner = jax.nn.one_hot(segment_ids[:, 1:] - 1, num_segments, dtype=jnp.float32)  # [b, S-1, P]; 0 -> none
    return (jnp.einsum("bs,bsp->bp", nll, owner),
            jnp.einsum("bs,bsp->bp", valid.astype(jnp.float32), owner))
