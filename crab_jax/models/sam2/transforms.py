"""SAM 2 image predictor's host-facing transforms: image in, prompts in, masks out.

* :func:`preprocess`: SAM2Transforms (``ToTensor`` -> ``Resize((S, S))`` -> ``Normalize``):
  pixels in [0, 255] divided by 255, resized to the model's square ``image_size`` with
  bilinear (align_corners=False), normalised with ImageNet mean / std. The resize runs on
  floats, as the original does; HF's ``Sam2ImageProcessorFast`` resizes the uint8 image
  first (rounding to integers) and so differs by up to half a grey level. For Crab+'s
  224 -> 1024 upsampling, torchvision's antialias flag changes nothing (the bilinear
  triangle filter has support 1 when enlarging); shrinking would need antialiasing,
  which this does not do.
* :func:`scale_coords`: ``transform_coords(normalize=True)``: x / W, y / H of the input
  image, times ``image_size``.
* :func:`prompt_slots`: the predictor's token order, box corners (labels 2, 3) first, then
  the points, then the padding not-a-point that ``_embed_points(pad=True)`` appends (the
  predictor always passes the box as points, so the pad is always there). Static slots with
  a validity mask; invalid slots get label -1.
* :func:`postprocess`: ``postprocess_masks`` with no hole / sprinkle filling (the predictor's
  defaults): bilinear (align_corners=False, no antialias) to the input size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crab_jax.models.sam2.prompt_encoder import NOT_A_POINT
from crab_jax.models.seg.resize import resize_bilinear

BOX_LABELS = (2, 3)


def preprocess(image: jax.Array, size: int, mean, std) -> jax.Array:
    """``[b, H, W, 3]`` RGB in [0, 255] -> ``[b, size, size, 3]`` normalised float32."""
    x = image.astype(jnp.float32) / 255.0
    x = resize_bilinear(x, (size, size))
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def scale_coords(coords: jax.Array, input_hw: tuple[int, int], size: int) -> jax.Array:
    """``[..., 2]`` (x, y) pixels of an ``input_hw`` image -> pixels of the ``size`` square."""
    h, w = input_hw
    scale = jnp.asarray([1.0 / w, 1.0 / h], jnp.float32)
    return coords.astype(jnp.float32) * scale * size


def prompt_slots(boxes, box_valid, points, point_labels, point_valid):
    """The sparse prompt as static slots.

    Args:
      boxes: ``[b, 4]`` (x1, y1, x2, y2) or None (no box slots); box_valid ``[b]`` bool or None
        (all valid).
      points: ``[b, n, 2]`` (x, y) or None; point_labels ``[b, n]`` int (1 positive, 0
        negative); point_valid ``[b, n]`` bool or None (all valid).
      Coordinates already in model-input pixels (:func:`scale_coords`).
    Returns:
      ``(coords [b, T, 2], labels [b, T] int32, valid [b, T] bool)``, ``T = 2·[box] + n + 1``.
    """
    parts = []
    if boxes is not None:
        b = boxes.shape[0]
        corners = boxes.astype(jnp.float32).reshape(b, 2, 2)
        valid = jnp.ones((b,), bool) if box_valid is None else box_valid.astype(bool)
        labels = jnp.broadcast_to(jnp.asarray(BOX_LABELS, jnp.int32), (b, 2))
        parts.append((corners, labels, jnp.broadcast_to(valid[:, None], (b, 2))))
    if points is not None:
        b, n = points.shape[:2]
        valid = jnp.ones((b, n), bool) if point_valid is None else point_valid.astype(bool)
        parts.append((points.astype(jnp.float32), point_labels.astype(jnp.int32), valid))
    if not parts:
        raise ValueError("a prompt needs a box or points")
    b = parts[0][0].shape[0]
    parts.append((jnp.zeros((b, 1, 2), jnp.float32), jnp.full((b, 1), NOT_A_POINT, jnp.int32),
                  jnp.ones((b, 1), bool)))
    coords, labels, valid = (jnp.concatenate(x, axis=1) for x in zip(*parts))
    return coords, jnp.where(valid, labels, NOT_A_POINT), valid


def postprocess(low_res_masks: jax.Array, input_hw: tuple[int, int]) -> jax.Array:
    """``[b, M, h, w]`` logits -> ``[b, M, H, W]`` logits at the input size (bilinear)."""
    return resize_bilinear(low_res_masks.astype(jnp.float32), input_hw, axes=(2, 3))
