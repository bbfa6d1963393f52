"""A tiny SAM 2.1 for the checkpoint, SAM2-stage and segment-command tests: HF ``Sam2Model`` built
and randomised with :mod:`tests.models.sam2.conftest`'s helpers, saved as an HF folder and as the
original's ``.pt``; and HF's masks for a prompt on a 224x224 frame (the stage's reference).

:func:`stage_config` is the tiny preset at 256 px: Crab+'s frames (224) are then enlarged into the
model, as into the real 1024-px one (a 64-px model would shrink them, where the original's
antialiased resize and the model's bilinear one differ).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import numpy as np
import pytest

from crab_jax.checkpoints.convert.writers import save_torch_bin
from crab_jax.checkpoints.sam2.original_names import hf_to_original
from crab_jax.models.sam2.config import Sam2Config, tiny
from tests.models.sam2.conftest import hf_model, hf_pixels, nnx_model, state_dict

torch = pytest.importorskip("torch")

MEDIA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "media"
STAGE_IMAGE_SIZE = 256
# Random tiny weights mostly output one mask whatever the prompt; with this seed the masks cover
# ~60% of the frame and move with the prompt (a prompt mix-up changes them).
SEED = 3


def stage_config() -> Sam2Config:
    cfg = tiny()
    s = STAGE_IMAGE_SIZE
    levels = tuple((s // 4 // 2 ** i,) * 2 for i in range(3))  # stride-4 patches, then q-pooled twice
    backbone = dataclasses.replace(cfg.vision.backbone, image_size=s)
    vision = dataclasses.replace(cfg.vision, backbone=backbone, backbone_feature_sizes=levels)
    return dataclasses.replace(cfg, vision=vision, prompt_encoder=dataclasses.replace(cfg.prompt_encoder, image_size=s))


@functools.lru_cache(maxsize=None)
def tiny_hf(size: str = "stage", seed: int = SEED):
    """``(cfg, HF Sam2Model)``: ``size`` ``'stage'`` (:func:`stage_config`) or ``'tiny'`` (64 px)."""
    cfg = stage_config() if size == "stage" else tiny()
    return cfg, hf_model(cfg, seed)


def jax_model(size: str = "stage"):
    cfg, hf = tiny_hf(size)
    return nnx_model(cfg, state_dict(hf))


def save_hf_dir(path, size: str = "stage") -> str:
    tiny_hf(size)[1].save_pretrained(os.fspath(path))
    return os.fspath(path)


def save_original_pt(path, size: str = "stage", extra: dict | None = None) -> str:
    """The model under the original's names as ``{"model": state dict}`` (+ ``extra`` tensors)."""
    sd = {k: v for k, v in state_dict(tiny_hf(size)[1]).items()}
    state = dict(hf_to_original(sd), **(extra or {}))
    save_torch_bin(os.fspath(path), state, extra={})
    return os.fspath(path)


def hf_mask_logits(frame: np.ndarray, box=None, points=(), size: str = "stage") -> np.ndarray:
    """HF ``Sam2Model`` on one 224x224 uint8 frame: ``[224, 224]`` float logits, bilinear from the
    low-res mask (the predictor's postprocessing); coordinates in the frame's pixels, labels 1."""
    cfg, hf = tiny_hf(size)
    scale = cfg.image_size / frame.shape[1], cfg.image_size / frame.shape[0]
    kw = {}
    if box is not None:
        b = np.asarray(box, np.float32).reshape(2, 2) * scale
        kw["input_boxes"] = torch.from_numpy(b.reshape(1, 1, 4))
    if len(points):
        p = np.asarray(points, np.float32) * scale
        kw["input_points"] = torch.from_numpy(p[None, None])
        kw["input_labels"] = torch.ones((1, 1, len(points)), dtype=torch.int64)
    with torch.no_grad():
        out = hf(pixel_values=hf_pixels(frame[None].astype(np.float32), cfg), multimask_output=False, **kw)
        low = out.pred_masks[:, 0]
        logits = torch.nn.functional.interpolate(low, frame.shape[:2], mode="bilinear", align_corners=False)
    return logits[0, 0].numpy()
