"""Predicted masks as files, the way the original's inference scripts save them.

* Binary masks (S4, MS3, Ref-AVS): ``(sigmoid(logits) > 0.5) * 255`` as uint8,
  ``Image.fromarray(...).convert('P')``, PNG (values exactly 0 and 255), plus the float32
  logits ``[H, W]`` as ``.npy`` so scores that threshold the logits (F-measure) can be
  computed exactly later.
* Class masks (AVSS): a palette PNG of the class ids with the 71 AVSBench colours
  (:func:`crab_jax.data.media.decode.avss_palette`); seen as RGB it is the original's colour
  mask, and :func:`crab_jax.data.media.decode.load_avss_mask` reads the ids back.
* An overlay JPEG: the mask blended over the frame the model saw (224 px).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from crab_jax.data.media.decode import avss_palette

OVERLAY_COLOUR = (255, 0, 0)  # binary masks: red over the frame
OVERLAY_ALPHA = 0.5


def binary_mask_uint8(logits: np.ndarray) -> np.ndarray:
    """``[H, W]`` logits -> ``[H, W]`` uint8 in {0, 255}: the script's threshold of the float32 sigmoid."""
    x = np.asarray(logits, np.float32)
    prob = (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)
    return ((prob > np.float32(0.5)).astype(np.uint8) * 255).astype(np.uint8)


def binary_mask_image(logits: np.ndarray) -> Image.Image:
    """The PNG image the original saves for a binary mask (mode ``'P'``)."""
    return Image.fromarray(binary_mask_uint8(logits)).convert("P")


def class_mask_image(classes: np.ndarray) -> Image.Image:
    """``[H, W]`` class ids -> a palette (mode ``'P'``) image with the AVSBench colours."""
    classes = np.asarray(classes)
    palette = avss_palette()
    if classes.min() < 0 or classes.max() >= len(palette):
        raise ValueError(f"class ids must be in [0, {len(palette)}), got {classes.min()}..{classes.max()}")
    image = Image.fromarray(classes.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    return image


def overlay_image(frame: np.ndarray, mask_rgb: np.ndarray, covered: np.ndarray) -> Image.Image:
    """``frame [H, W, 3]`` uint8 with ``mask_rgb [H, W, 3]`` blended where ``covered [H, W]``."""
    out = np.asarray(frame, np.float32).copy()
    blend = (1 - OVERLAY_ALPHA) * out + OVERLAY_ALPHA * np.asarray(mask_rgb, np.float32)
    out[covered] = blend[covered]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def write_mask_files(folder: str, stem: str, *, logits: np.ndarray | None = None, classes: np.ndarray | None = None,
                     frame: np.ndarray | None = None) -> dict[str, str]:
    """Writes ``<stem>_pred.png`` (+ ``<stem>_logits.npy`` for a binary mask, + ``<stem>_overlay.jpg``
    when the frame is given) under ``folder``; returns ``{"pred_mask_path", "pred_logits_path",
    "overlay_path"}`` of what was written. Exactly one of ``logits`` / ``classes`` is given."""
    if (logits is None) == (classes is None):
        raise ValueError("write_mask_files: give exactly one of logits (binary mask) or classes (class mask)")
    os.makedirs(folder, exist_ok=True)
    paths = {"pred_mask_path": os.path.join(folder, f"{stem}_pred.png")}
    if logits is not None:
        binary = binary_mask_uint8(logits)
        Image.fromarray(binary).convert("P").save(paths["pred_mask_path"], format="PNG")
        paths["pred_logits_path"] = os.path.join(folder, f"{stem}_logits.npy")
        np.save(paths["pred_logits_path"], np.asarray(logits, np.float32))
        covered, colours = binary > 0, np.broadcast_to(np.asarray(OVERLAY_COLOUR, np.uint8), binary.shape + (3,))
    else:
        class_mask_image(classes).save(paths["pred_mask_path"], format="PNG")
        covered, colours = np.asarray(classes) > 0, avss_palette()[np.asarray(classes)]
    if frame is not None:
        if frame.shape[:2] != covered.shape:
            raise ValueError(f"overlay: frame {frame.shape[:2]} and mask {covered.shape} differ in size")
        paths["overlay_path"] = os.path.join(folder, f"{stem}_overlay.jpg")
        overlay_image(frame, colours, covered).save(paths["overlay_path"], format="JPEG", quality=90)
    return paths
