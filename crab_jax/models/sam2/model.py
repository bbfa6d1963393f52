"""SAM 2.1's image predictor path as Crab+ uses it (``SAM2ImagePredictor`` on one frame).

:class:`Sam2ImageModel` holds HF ``Sam2Model``'s image-path parameters under HF's
state-dict paths; :func:`predict_masks` is the pure, static-shape predictor:
preprocess -> trunk + neck -> ``conv_s0`` / ``conv_s1`` on the two high-res levels and
``no_memory_embedding`` added to the lowest-resolution one (``directly_add_no_mem_embed``)
-> prompt tokens -> mask decoder -> bilinear to the input size. The binary mask is
``mask_logits > 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.layers import zeros_init
from crab_jax.models.sam2.config import Sam2Config
from crab_jax.models.sam2.mask_decoder import MaskDecoder
from crab_jax.models.sam2.neck import VisionEncoder
from crab_jax.models.sam2.prompt_encoder import PositionalEmbedding, PromptEncoder, grid_encoding
from crab_jax.models.sam2.transforms import postprocess, preprocess, prompt_slots, scale_coords
from crab_jax.parallel.sharding import param


class ImageEmbeddings(NamedTuple):
    """What the mask decoder consumes (SAM2ImagePredictor's ``_features``), channels-last."""

    feat_s0: jax.Array  # [b, 4h, 4w, C/8]: conv_s0(FPN level 0)
    feat_s1: jax.Array  # [b, 2h, 2w, C/4]: conv_s1(FPN level 1)
    image_embed: jax.Array  # [b, h, w, C]: FPN level 2 + no_memory_embedding


class DecoderOutput(NamedTuple):
    low_res_masks: jax.Array  # [b, M, 4h, 4w] logits
    iou: jax.Array  # [b, M]
    object_score_logits: jax.Array  # [b, 1]


class Sam2ImageModel(nnx.Module):
    def __init__(self, cfg: Sam2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c = cfg.vision.fpn_hidden_size
        self.shared_image_embedding = PositionalEmbedding(c, scale=cfg.prompt_encoder.scale, rngs=rngs)
        self.vision_encoder = VisionEncoder(cfg.vision, rngs=rngs)
        self.prompt_encoder = PromptEncoder(cfg.prompt_encoder, rngs=rngs)
        self.mask_decoder = MaskDecoder(cfg.mask_decoder, rngs=rngs)
        self.no_memory_embedding = param(zeros_init, rngs.params(), (1, 1, c), (None, None, "embed"))

    def image_embeddings(self, pixels: jax.Array) -> ImageEmbeddings:
        """``[b, S, S, 3]`` normalised pixels -> :class:`ImageEmbeddings`."""
        fpn = self.vision_encoder(pixels)
        return ImageEmbeddings(self.mask_decoder.conv_s0(fpn[0]), self.mask_decoder.conv_s1(fpn[1]),
                               fpn[-1] + self.no_memory_embedding[...].astype(fpn[-1].dtype))

    def image_pe(self) -> jax.Array:
        """``[h, w, C]``: the dense Fourier encoding of the low-resolution grid."""
        h, w = self.cfg.prompt_encoder.embedding_size
        return grid_encoding(self.shared_image_embedding.positional_embedding[...], h, w)

    def decode(self, emb: ImageEmbeddings, coords: jax.Array, labels: jax.Array, valid: jax.Array | None = None,
               *, multimask_output: bool = False) -> DecoderOutput:
        """Prompt slots (model-input pixels, :func:`~crab_jax.models.sam2.transforms.prompt_slots`)
        ``coords [b, T, 2]``, ``labels [b, T]``, ``valid [b, T]`` -> :class:`DecoderOutput`."""
        gaussian = self.shared_image_embedding.positional_embedding[...]
        sparse = self.prompt_encoder.embed_points(coords, labels, gaussian)
        dense = self.prompt_encoder.dense_no_mask(coords.shape[0])
        masks, iou, obj = self.mask_decoder(emb.image_embed, self.image_pe(), sparse, valid, dense,
                                            (emb.feat_s0, emb.feat_s1), multimask_output=multimask_output)
        return DecoderOutput(masks, iou, obj)


class Prediction(NamedTuple):
    mask_logits: jax.Array  # [b, M, H, W] at the input size; the mask is > 0
    iou: jax.Array  # [b, M]
    low_res_masks: jax.Array  # [b, M, 4h, 4w] the decoder's logits
    object_score_logits: jax.Array  # [b, 1]


def predict(model: Sam2ImageModel, image: jax.Array, boxes: jax.Array | None = None,
            points: jax.Array | None = None, point_labels: jax.Array | None = None,
            point_valid: jax.Array | None = None, *, box_valid: jax.Array | None = None,
            multimask_output: bool = False) -> Prediction:
    """SAM2ImagePredictor ``set_image_batch`` + ``predict_batch`` for one prompt per image.

    Args:
      image: ``[b, H, W, 3]`` RGB in [0, 255] (Crab+: the 224x224 LANCZOS-resized frame).
      boxes: ``[b, 4]`` (x1, y1, x2, y2) input-image pixels, or None; box_valid ``[b]`` bool.
      points: ``[b, n, 2]`` (x, y) input-image pixels, or None; point_labels ``[b, n]`` (1 / 0;
        Crab+ passes 1; default 1); point_valid ``[b, n]`` bool, False for padding slots.
      multimask_output: static; Crab+ uses False (M = 1; True: M = 3).
    An image needs at least one valid box or point: with none, the original passes an empty
    prompt while this still sees the padding not-a-point token.
    """
    b, h, w, _ = image.shape
    size = model.cfg.image_size
    pixels = preprocess(image, size, model.cfg.pixel_mean, model.cfg.pixel_std)
    emb = model.image_embeddings(pixels)
    if points is not None and point_labels is None:
        point_labels = jnp.ones(points.shape[:2], jnp.int32)
    boxes = None if boxes is None else scale_coords(boxes.reshape(b, 2, 2), (h, w), size).reshape(b, 4)
    points = None if points is None else scale_coords(points, (h, w), size)
    coords, labels, valid = prompt_slots(boxes, box_valid, points, point_labels, point_valid)
    out = model.decode(emb, coords, labels, valid, multimask_output=multimask_output)
    return Prediction(postprocess(out.low_res_masks, (h, w)), out.iou, out.low_res_masks, out.object_score_logits)


def predict_masks(model: Sam2ImageModel, image: jax.Array, boxes: jax.Array | None = None,
                  points: jax.Array | None = None, point_labels: jax.Array | None = None,
                  point_valid: jax.Array | None = None, *, box_valid: jax.Array | None = None,
                  multimask_output: bool = False) -> tuple[jax.Array, jax.Array]:
    """:func:`predict` -> ``(mask_logits [b, H, W], iou [b])`` (``[b, 3, H, W]`` / ``[b, 3]``
    with ``multimask_output``); the binary mask is ``mask_logits > 0``."""
    out = predict(model, image, boxes, points, point_labels, point_valid, box_valid=box_valid,
                  multimask_output=multimask_output)
    if multimask_output:
        return out.mask_logits, out.iou
    return out.mask_logits[:, 0], out.iou[:, 0]
