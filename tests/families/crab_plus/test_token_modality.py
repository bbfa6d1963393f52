"""Crab+'s token modality: visual where an image / video placeholder sits (its slot reads a
vision row), audio where an audio placeholder sits, text elsewhere."""

from __future__ import annotations

import numpy as np

from crab_jax.models.media import AUDIO, TEXT, VISUAL
from tests.families.crab_plus.thinker_helpers import random_thinker_batch


def test_modality_follows_the_placeholder_tokens_of_the_layout():
    family, cfg, batch = random_thinker_batch(3)
    ids, tok = batch["input_ids"], cfg.tokens
    expected = np.where(np.isin(ids, [tok.image, tok.video]), VISUAL, np.where(ids == tok.audio, AUDIO, TEXT))
    got = family.token_modality(batch, cfg)
    np.testing.assert_array_equal(got, expected)
    assert {TEXT, VISUAL, AUDIO} <= set(np.unique(got).tolist())
    text_only = {k: v for k, v in batch.items() if k != "pixel_slices"}
    text_only["media_index"] = np.full_like(batch["media_index"], -1)
    assert np.all(family.token_modality(text_only, cfg) == TEXT)
