"""Crab+'s token modality: visual where an image / video placeholder sits (its slot reads a
vision row), audio where an audio placeholder sits, text elsewhere."""

from __future__ import annotations

import numpy as np

from crab_jax.config.schema import get_config
from crab_jax.config.sections import RunConfig
from crab_jax.families import get
from crab_jax.families.crab_plus.presets import tiny_thinker_config
from crab_jax.models.media import AUDIO, TEXT, VISUAL


def test_modality_follows_the_placeholder_tokens_of_the_layout():
    family, cfg = get("crab_plus"), tiny_thinker_config()
    c = get_config()
    c.model.family, c.data.seq_len = "crab_plus", 256
    spec = family.batch.spec(RunConfig.from_config(c).data, cfg, 3)
    batch = next(iter(family.batch.random_batches(spec, cfg, 0)))
    ids, tok = batch["input_ids"], cfg.tokens
    expected = np.where(np.isin(ids, [tok.image, tok.video]), VISUAL, np.where(ids == tok.audio, AUDIO, TEXT))
    got = family.token_modality(batch, cfg)
    np.testing.assert_array_equal(got, expected)
    assert {TEXT, VISUAL, AUDIO} <= set(np.unique(got).tolist())
    text_only = {k: v for k, v in batch.items() if k != "pixel_slices"}
    text_only["media_index"] = np.full_like(batch["media_index"], -1)
    assert np.all(family.token_modality(text_only, cfg) == TEXT)
