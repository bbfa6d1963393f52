"""Crab's token modality: visual where a frame placeholder's Q-Former rows are spliced in, audio
where the audio placeholder's are, text elsewhere (the random batches keep each media slot's
placeholder id, the layout the model splices)."""

from __future__ import annotations

import numpy as np

from crab_jax.families import get
from crab_jax.families.crab import batch_spec
from crab_jax.families.crab.presets import tiny_crab_config
from crab_jax.models.media import AUDIO, TEXT, VISUAL


def test_modality_follows_the_media_placeholders():
    family, cfg = get("crab"), tiny_crab_config()
    spec = batch_spec.BatchSpec(batch=4, seq_len=32, frame_slots=3, audio_slots=2, fbank_frames=16, image_size=56)
    batch = next(iter(family.batch.random_batches(spec, cfg, 0)))
    ids, special = batch["input_ids"], cfg.special_token_ids
    visual_ids = [special["<image>"], special["<video>"]]
    expected = np.where(np.isin(ids, visual_ids), VISUAL, np.where(ids == special["<audio>"], AUDIO, TEXT))
    got = family.token_modality(batch, cfg)
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got).tolist()) == {TEXT, VISUAL, AUDIO}
