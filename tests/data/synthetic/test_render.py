"""Rendering of synthetic clips: the in-memory frames / masks / audio are what the files hold,
and each class's tone is distinct in the model's filterbank."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from crab_jax.data.media.audio import load_audio
from crab_jax.data.media.fbank import beats_fbank
from crab_jax.data.synthetic import render, scenes
from tests.data.synthetic.media_checks import read_image


def test_in_memory_render_matches_the_files(dataset):
    s = scenes.sample_avs("s4", 0, "test", 1)
    frames, masks = render.render_frames(s.clip)
    base = dataset / "avs" / "v1s" / s.uid
    for i in range(scenes.AVS_UNITS):
        np.testing.assert_array_equal(read_image(base / "labels_semantic" / f"{i}.png") > 0, masks[i])
        assert np.abs(read_image(base / "frames" / f"{i}.jpg").astype(int) - frames[i]).mean() < 4
    wav = load_audio(base / "audio.wav")
    np.testing.assert_allclose(wav, render.render_audio(s.clip), atol=1 / 32767 + 1e-6)


def test_class_tones_are_distinct_in_the_model_fbank():
    """Each class's tone peaks in its own mel bin of the BEATs filterbank the model sees."""
    peaks = []
    for k in range(len(scenes.CLASSES)):
        s = scenes.sample_avs("s4", 0, "train", 0)
        clip = dataclasses.replace(s.clip, tracks=(dataclasses.replace(s.clip.tracks[0], cls=k),), sounding=0)
        fb = beats_fbank(render.render_audio(clip)[: scenes.UNIT_SAMPLES])
        assert fb.shape == (1 + (scenes.UNIT_SAMPLES - 400) // 160, 128)
        peaks.append(int(np.argmax(fb.mean(0))))
    assert peaks == sorted(peaks) and min(np.diff(peaks)) >= 4, peaks


def test_mask_points_lie_on_the_mask_at_224_px():
    """Every shape, thin parts included (cross, ring): the points are distinct object pixels of
    the mask upscaled to 224 px with nearest neighbour (how spec B.6 reads a GT mask)."""
    for cls in scenes.CLASSES:
        for r in (5, 9):
            mask = render.shape_mask(cls.shape, 20, 31, r)
            big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((224, 224), Image.NEAREST)) > 0
            points = render.mask_points(mask, 3)
            assert len({tuple(p) for p in points}) == 3, cls.shape
            assert all(big[y, x] for x, y in points), (cls.shape, r, points)
