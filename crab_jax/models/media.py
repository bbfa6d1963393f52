"""Media rows into token embeddings: the one splice every family's LLM input uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def splice_media(text_embeds: jax.Array, media_rows: jax.Array, media_index: jax.Array) -> jax.Array:
    """Replaces the media slots' embeddings with encoder rows, one gather (no data-dependent shape).

    Args:
      text_embeds: ``[b, S, d]`` embeddings of the ids (media slots hold their placeholder's).
      media_rows: ``[b, M, d]`` the sample's encoded media rows.
      media_index: ``[b, S]`` row of ``media_rows`` for a media slot, -1 for text.
    Returns:
      ``[b, S, d]`` in ``text_embeds``' dtype.
    """
    rows = jnp.take_along_axis(media_rows.astype(text_embeds.dtype), jnp.maximum(media_index, 0)[..., None], axis=1)
    return jnp.where((media_index >= 0)[..., None], rows, text_embeds)
