"""Which slots of the thinker's sequence hold text, visual or audio rows (``Family.token_modality``).

The thinker splices ``concat(visual rows, audio rows)`` (:meth:`CrabPlusThinker.media_rows`):
``V * tokens_per_slice`` merged vision rows of the ``V`` visual slots first (images, then
videos), then the audio rows; ``media_index`` (:mod:`crab_jax.families.crab_plus.layout`)
names each placeholder's row (-1 for text).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.models.media import media_modality


def token_modality(batch: Mapping[str, Any], cfg: CrabPlusConfig) -> np.ndarray:
    """``[b, S]`` int32: 0 text, 1 visual, 2 audio (``batch``: ``media_index [b, S]``, optional
    ``pixel_slices [b, V, ...]``; absent or 0 slots: no visual rows)."""
    pixels = batch.get("pixel_slices")
    slots = 0 if pixels is None else int(np.shape(pixels)[1])
    return media_modality(batch["media_index"], slots * cfg.tokens_per_slice)
