"""Media rows into token embeddings: the one splice every family's LLM input uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# What a slot of the LLM's sequence holds (``Family.token_modality``, the router analysis).
TEXT, VISUAL, AUDIO = 0, 1, 2
MODALITY_NAMES = ("text", "visual", "audio")


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


def media_modality(media_index, visual_rows: int) -> np.ndarray:
    """``[b, S]`` :data:`TEXT` / :data:`VISUAL` / :data:`AUDIO` of each slot, for a media buffer
    laid out as every family here lays it: ``visual_rows`` vision rows first, then audio rows.

    media_index: ``[b, S]`` row of the media buffer (-1 for text), as :func:`splice_media` reads it.
    """
    index = np.asarray(media_index)
    return np.where(index < 0, TEXT, np.where(index < int(visual_rows), VISUAL, AUDIO)).astype(np.int32)
