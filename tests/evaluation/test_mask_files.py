"""Mask files as the quick start writes them: binary PNG (0/255, mode 'P'), AVSS palette PNG
(decodes back to the class ids), logits .npy, overlay JPEG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crab_jax.data.media.decode import AVSS_NUM_CLASSES, load_avss_mask
from crab_jax.evaluation import mask_files


def test_binary_png_is_0_255_palette_and_logits_are_kept(tmp_path):
    logits = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    logits[:, :16] = np.abs(logits[:, :16]) + 1e-3  # the left half is mask (JPEG blurs single pixels)
    logits[:, 16:] = -np.abs(logits[:, 16:]) - 1e-3
    frame = np.full((32, 32, 3), 100, np.uint8)
    paths = mask_files.write_mask_files(str(tmp_path), "x", logits=logits, frame=frame)
    png = Image.open(paths["pred_mask_path"])
    assert png.mode == "P"
    values = np.asarray(png.convert("L"))
    assert set(np.unique(values).tolist()) == {0, 255}
    assert np.array_equal(values == 255, logits > 0)
    assert np.array_equal(np.load(paths["pred_logits_path"]), logits)
    overlay = np.asarray(Image.open(paths["overlay_path"]))
    assert overlay.shape == (32, 32, 3)
    assert overlay[logits > 0, 0].mean() > overlay[logits <= 0, 0].mean() + 50  # red where the mask is


def test_avss_palette_png_decodes_back_to_the_class_ids(tmp_path):
    classes = np.random.default_rng(1).integers(0, AVSS_NUM_CLASSES, size=(24, 24)).astype(np.int32)
    paths = mask_files.write_mask_files(str(tmp_path), "a", classes=classes, frame=np.zeros((24, 24, 3), np.uint8))
    assert Image.open(paths["pred_mask_path"]).mode == "P" and "pred_logits_path" not in paths
    assert np.array_equal(load_avss_mask(paths["pred_mask_path"], size=24)[0], classes)
    assert Image.open(paths["overlay_path"]).size == (24, 24)


def test_bad_mask_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        mask_files.write_mask_files(str(tmp_path), "b")
    with pytest.raises(ValueError, match="class ids"):
        mask_files.class_mask_image(np.full((2, 2), AVSS_NUM_CLASSES))
    with pytest.raises(ValueError, match="differ in size"):
        mask_files.write_mask_files(str(tmp_path), "c", logits=np.zeros((4, 4)), frame=np.zeros((5, 5, 3), np.uint8))
