"""Which slots of Crab's LLM sequence hold text, visual or audio rows (``Family.token_modality``).

Crab splices ``concat(visual rows, audio rows)`` into the sequence (:func:`media_layout`):
``frame_slots * Qv`` visual Q-Former rows first, then the audio ones; ``media_index`` names
each media slot's row (-1 for text).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from crab_jax.families.crab.model import CrabConfig, media_layout
from crab_jax.models.media import media_modality


def token_modality(batch: Mapping[str, Any], cfg: CrabConfig) -> np.ndarray:
    """``[b, S]`` int32: 0 text, 1 visual, 2 audio (``batch``: ``media_index [b, S]``, ``frames
    [b, T, ...]``, ``fbank [b, A, ...]``)."""
    layout = media_layout(cfg, int(np.shape(batch["frames"])[1]), int(np.shape(batch["fbank"])[1]))
    return media_modality(batch["media_index"], layout.audio_offset)
