"""Opt-in: :func:`predict` against the ORIGINAL ``SAM2ImagePredictor`` (``SAM2_SOURCE`` = a folder
holding facebookresearch/sam2's ``sam2`` package), loaded from the original's key names through
``original_to_hf`` + the HF table. Crab+'s call: ``set_image_batch`` of uint8 frames, then
``predict_batch`` with per-image boxes / point lists, ``multimask_output=False``."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from crab_jax.checkpoints.convert.tables.sam2 import original_to_hf
from crab_jax.models.sam2.config import tiny
from crab_jax.models.sam2.model import predict
from tests.conftest import assert_parity
from tests.models.sam2.conftest import nnx_model, randomize

torch = pytest.importorskip("torch")
SOURCE = os.environ.get("SAM2_SOURCE")


@pytest.mark.slow
@pytest.mark.parity
@pytest.mark.skipif(not SOURCE, reason="SAM2_SOURCE (facebookresearch/sam2 sources) not set")
def test_against_the_original_predictor():
    from tests.models.sam2.original_sam2 import build_predictor, original_config

    cfg = original_config(tiny())
    predictor, model = build_predictor(SOURCE, cfg)
    randomize(model, 0)
    with torch.no_grad():
        g = model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        g.copy_(torch.randn(g.shape, generator=torch.Generator().manual_seed(1)))
    state, dropped = original_to_hf({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
    assert not any(k.startswith(("image_encoder.", "sam_")) for k in dropped), dropped
    ours = nnx_model(cfg, state)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 3)).astype(np.uint8) for _ in range(2)]
    boxes = [np.array([6, 5, 30, 33]), None]
    points = [np.array([[10, 12], [25, 20], [40, 30]]), np.array([[30, 10], [22, 25]])]
    with torch.no_grad():
        predictor.set_image_batch(images)
        masks, ious, _ = predictor.predict_batch(points, [np.ones(len(p)) for p in points], box_batch=boxes,
                                                 multimask_output=False, return_logits=True)
    slots = np.zeros((2, 3, 2), np.float32)
    slots[0], slots[1, :2] = points
    out = predict(ours, jnp.asarray(np.stack(images), jnp.float32),
                  jnp.asarray([[6, 5, 30, 33], [0, 0, 0, 0]], jnp.float32), jnp.asarray(slots),
                  jnp.ones((2, 3), jnp.int32), jnp.asarray([[True] * 3, [True, True, False]]),
                  box_valid=jnp.asarray([True, False]))
    assert_parity(out.mask_logits[:, 0], np.stack([m[0] for m in masks]), "original predictor mask logits", 1e-5)
    assert_parity(out.iou[:, 0], np.stack([i[0] for i in ious]), "original predictor iou", 1e-5)
