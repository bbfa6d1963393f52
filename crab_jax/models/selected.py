"""Run a per-sample computation only where a sample needs it, in fixed-size chunks.

Static shapes keep every sample of a batch in every op, so a branch that only some samples use
(Crab's mask decoder: the segmentation samples) costs the whole batch. :func:`map_selected`
moves the selected samples to the front, cuts the batch into chunks of ``chunk`` samples and
runs ``fn`` under ``lax.cond`` per chunk: chunks without a selected sample are skipped, so the
work follows how many samples are selected while no shape depends on it (one compile for any
batch composition). Reverse-mode autodiff goes through the scan and the conds.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def map_selected(fn: Callable[[Any], Any], selected: jax.Array, inputs: Any, chunk: int) -> Any:
    """``fn`` on the selected samples of ``inputs``; unselected samples get zeros.

    Args:
      fn: maps a pytree of ``[chunk, ...]`` arrays to a pytree of ``[chunk, ...]`` arrays, sample
        by sample (no mixing across the batch axis).
      selected: ``[b]`` bool.
      inputs: pytree of ``[b, ...]`` arrays.
      chunk: samples per call of ``fn`` (static, >= 1). ``b`` need not be a multiple: the last
        chunk is filled with copies of sample 0, whose outputs are dropped.
    Returns:
      the pytree ``fn`` returns, each leaf ``[b, ...]`` in the input order, zero where not selected.
    """
    if chunk < 1:
        raise ValueError(f"map_selected: chunk must be >= 1, got {chunk}")
    b = selected.shape[0]
    chunks = -(-b // chunk)
    fill = chunks * chunk - b
    order = jnp.argsort(~selected, stable=True).astype(jnp.int32)  # selected first, batch order kept
    padded_order = jnp.concatenate([order, jnp.zeros((fill,), jnp.int32)])
    padded_selected = jnp.concatenate([selected[order], jnp.zeros((fill,), bool)])
    xs = jax.tree.map(lambda x: x[padded_order].reshape(chunks, chunk, *x.shape[1:]), inputs)
    # Rematerialised: a cond's residuals for the backward are materialised (XLA cannot fuse
    # across it), which for the mask decoder's [n, 224, 224, K] maps made the backward slower
    # than decoding every sample; recomputing the chunk's forward in the backward is cheaper.
    fn = jax.checkpoint(fn)
    out_struct = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], xs))
    skip = lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)

    def one_chunk(carry, args):
        x, sel = args
        return carry, jax.lax.cond(jnp.any(sel), fn, skip, x)

    _, ys = jax.lax.scan(one_chunk, None, (xs, padded_selected.reshape(chunks, chunk)))
    back = jnp.argsort(order).astype(jnp.int32)  # sorted slot of each sample

    def unsort(y):
        y = y.reshape(chunks * chunk, *y.shape[2:])[back]
        keep = selected.reshape((b,) + (1,) * (y.ndim - 1))
        return jnp.where(keep, y, jnp.zeros((), y.dtype))

    return jax.tree.map(unsort, ys)


def map_slots(fn: Callable[[Any], Any], used: jax.Array, inputs: Any, chunk: int) -> Any:
    """:func:`map_selected` over the media slots of a batch: ``inputs`` leaves ``[b, s, ...]``,
    ``used [b, s]``; ``fn`` maps ``[chunk, ...]`` slots to ``[chunk, ...]``; returns leaves
    ``[b, s, ...]`` (zeros where not used)."""
    b, s = used.shape
    flat = jax.tree.map(lambda x: x.reshape(b * s, *x.shape[2:]), inputs)
    out = map_selected(fn, used.reshape(b * s), flat, chunk)
    return jax.tree.map(lambda y: y.reshape(b, s, *y.shape[1:]), out)
