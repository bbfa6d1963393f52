"""SAM 2.1 image predictor parity with HF ``Sam2Model`` (multimask_output=False, eval):
box only, points only, box + points through the static prompt slots; postprocessing to the
input size; negative controls (a flipped label, a shifted box, a padding slot made valid).

Every single-mask case runs ONE compiled :func:`predict` (image in [0, 255] at the input
size, a box slot and three point slots with validity masks), so the file compiles twice.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.sam2.model import predict, predict_masks
from crab_jax.models.sam2.transforms import postprocess, scale_coords
from tests.conftest import assert_parity
from tests.models.sam2.conftest import hf_pixels

torch = pytest.importorskip("torch")

RTOL = 1e-5
# A negative control must move the masks by far more than the parity bound (random tiny
# weights make one prompt change small, so "far more" is 100x the bound, not a fixed share).
CONTROL = 100 * RTOL
# The input frame (Crab+: 224x224 into a 1024 model; here a non-square frame into 64).
INPUT_HW = (40, 48)
BOXES = np.array([[6, 5, 30, 33], [20, 8, 44, 36]], np.float32)  # (x1, y1, x2, y2) input pixels
POINTS = np.array([[[10, 12], [25, 20], [40, 30]], [[30, 10], [22, 25], [5, 35]]], np.float32)
LABELS = np.ones((2, 3), np.int32)
ALL_POINTS = np.ones((2, 3), bool)
NO_POINTS = np.zeros((2, 3), bool)
BOTH = np.ones(2, bool)
NO_BOX = np.zeros(2, bool)


@pytest.fixture(scope="module")
def setup(pair):
    image = np.random.default_rng(3).integers(0, 256, (2, *INPUT_HW, 3)).astype(np.float32)
    run = nnx.jit(lambda m, img, b, p, l, v, bv, multimask: predict(m, img, b, p, l, v, box_valid=bv,
                                                                     multimask_output=multimask),
                  static_argnums=7)
    out = dict(image=image, pixels=hf_pixels(image, pair.cfg), run=run)
    out["base"] = ours(pair, out)  # compiles here: box + 3 points on both images
    return out


def ours(pair, setup, boxes=BOXES, points=POINTS, labels=LABELS, point_valid=ALL_POINTS, box_valid=BOTH,
         multimask=False):
    return setup["run"](pair.model, setup["image"], boxes, points, labels, point_valid, box_valid, multimask)


def to_model(pair, coords):
    """Input-image pixels -> model pixels (what HF's processor hands Sam2Model)."""
    return np.asarray(scale_coords(jnp.asarray(coords), INPUT_HW, pair.cfg.image_size))


def hf_run(pair, setup, rows, boxes=None, points=None, labels=None, multimask=False):
    """HF on images ``rows`` with prompts in input pixels -> (masks [b, M, h, w], iou [b, M], obj [b, 1])."""
    kw = {}
    if boxes is not None:
        kw["input_boxes"] = torch.from_numpy(to_model(pair, boxes.reshape(-1, 2, 2)).reshape(len(rows), 1, 4))
    if points is not None:
        kw["input_points"] = torch.from_numpy(to_model(pair, points)[:, None])
        kw["input_labels"] = torch.from_numpy(labels[:, None].astype(np.int64))
    with torch.no_grad():
        out = pair.hf(pixel_values=setup["pixels"][rows], multimask_output=multimask, **kw)
    return out.pred_masks[:, 0].numpy(), out.iou_scores[:, 0].numpy(), out.object_score_logits[:, 0].numpy()


def check(name, got, ref):
    for what, a, r in (("masks", got.low_res_masks, ref[0]), ("iou", got.iou, ref[1]),
                       ("object score", got.object_score_logits, ref[2])):
        assert_parity(a, r, f"{name} {what}", RTOL)


def rows(out, sl):
    return type(out)(*(x[sl] for x in out))


@pytest.mark.parity
def test_box_only(pair, setup):
    check("box", ours(pair, setup, point_valid=NO_POINTS), hf_run(pair, setup, [0, 1], boxes=BOXES))


@pytest.mark.parity
def test_points_only(pair, setup):
    check("points", ours(pair, setup, box_valid=NO_BOX),
          hf_run(pair, setup, [0, 1], points=POINTS, labels=LABELS))


@pytest.mark.parity
def test_box_and_points(pair, setup):
    # HF puts the box after the points, the original predictor before: the decoder's tokens
    # carry no order, so both give the same masks.
    check("box+points", setup["base"], hf_run(pair, setup, [0, 1], boxes=BOXES, points=POINTS, labels=LABELS))


@pytest.mark.parity
def test_mask_logits_at_input_size(pair, setup):
    """``predict_masks``' logits: HF's low-res masks, bilinear to the input size."""
    ref = hf_run(pair, setup, [0, 1], boxes=BOXES, points=POINTS, labels=LABELS)
    ref_logits = torch.nn.functional.interpolate(torch.from_numpy(ref[0]), INPUT_HW, mode="bilinear",
                                                 align_corners=False)[:, 0].numpy()
    logits = setup["base"].mask_logits[:, 0]
    assert_parity(logits, ref_logits, "mask logits at the input size", RTOL)
    # The binary mask agrees wherever the reference is not within float noise of 0.
    sure = np.abs(ref_logits) > RTOL * np.abs(ref_logits).max()
    np.testing.assert_array_equal((np.asarray(logits) > 0)[sure], (ref_logits > 0)[sure])


@pytest.mark.parity
def test_padding_slots_equal_fewer_points(pair, setup):
    # Image 0: box + 3 points; image 1: no box, 2 points + a padding slot with junk coordinates.
    points = POINTS.copy()
    points[1, 2] = (47, 1)
    valid = np.array([[True, True, True], [True, True, False]])
    got = ours(pair, setup, points=points, point_valid=valid, box_valid=np.array([True, False]))
    check("slots image 0", rows(got, slice(0, 1)),
          hf_run(pair, setup, [0], boxes=BOXES[:1], points=points[:1], labels=LABELS[:1]))
    ref1 = hf_run(pair, setup, [1], points=points[1:, :2], labels=LABELS[1:, :2])
    check("slots image 1", rows(got, slice(1, 2)), ref1)
    # Negative control: the same junk slot marked valid changes image 1's masks.
    junk = ours(pair, setup, points=points, box_valid=np.array([True, False]))
    change = np.abs(np.asarray(junk.low_res_masks[1]) - ref1[0][0]).max() / np.abs(ref1[0]).max()
    print(f"negative control junk slot made valid: max |mask change| / max|mask| = {change:.3e}")
    assert change > CONTROL


@pytest.mark.parity
def test_negative_controls(pair, setup):
    base = np.asarray(setup["base"].low_res_masks)
    scale = float(np.abs(base).max())
    flipped = LABELS.copy()
    flipped[:, 0] = 0
    for name, other in (("label flipped", ours(pair, setup, labels=flipped)),
                        ("box shifted", ours(pair, setup, boxes=BOXES + 6))):
        diff = np.abs(np.asarray(other.low_res_masks) - base).max(axis=(1, 2, 3))
        print(f"negative control {name}: max |mask change| / max|mask| per image = {diff / scale}")
        assert (diff > CONTROL * scale).all(), name


@pytest.mark.parity
@pytest.mark.parametrize("thresh", [0.98, -1.0, 2.0])
def test_single_mask_choice_by_stability(pair, thresh):
    """The single-mask choice against HF's on logits with stable and unstable first masks
    (-1: mask 0 always kept; 2: always the best multimask output)."""
    rng = np.random.default_rng(5)
    delta = pair.cfg.mask_decoder.dynamic_multimask_stability_delta
    logits = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    logits[:2, 0] = 10 * np.sign(logits[:2, 0])  # stable
    logits[2:, 0] = 2 * delta * logits[2:, 0]  # unstable
    iou = rng.uniform(size=(4, 4)).astype(np.float32)
    hf_dec, model_dec = pair.hf.mask_decoder, pair.model.mask_decoder
    old_hf, old_cfg = hf_dec.dynamic_multimask_stability_thresh, model_dec.cfg
    try:
        hf_dec.dynamic_multimask_stability_thresh = thresh
        model_dec.cfg = dataclasses.replace(old_cfg, dynamic_multimask_stability_thresh=thresh)
        with torch.no_grad():
            ref = hf_dec._dynamic_multimask_via_stability(torch.from_numpy(logits)[:, None],
                                                          torch.from_numpy(iou)[:, None])
        got = model_dec._choose_by_stability(jnp.asarray(logits), jnp.asarray(iou))
    finally:
        hf_dec.dynamic_multimask_stability_thresh, model_dec.cfg = old_hf, old_cfg
    np.testing.assert_array_equal(np.asarray(got[0]), ref[0][:, 0].numpy())
    np.testing.assert_array_equal(np.asarray(got[1]), ref[1][:, 0].numpy())
    kept = (np.asarray(got[0])[:, 0] == logits[:, 0]).all(axis=(1, 2))
    assert kept.tolist() == {0.98: [True, True, False, False], -1.0: [True] * 4, 2.0: [False] * 4}[thresh]


@pytest.mark.parity
def test_postprocess_matches_torch():
    low = np.random.default_rng(4).standard_normal((2, 1, 16, 16)).astype(np.float32)
    for hw in ((40, 48), (12, 10)):  # enlarge (the tiny model) and shrink (256 -> 224 for Crab+)
        ref = torch.nn.functional.interpolate(torch.from_numpy(low), hw, mode="bilinear", align_corners=False)
        assert_parity(postprocess(low, hw), ref.numpy(), f"postprocess {hw}", RTOL)


@pytest.mark.slow
@pytest.mark.parity
def test_multimask_and_predict_masks(pair, setup):
    """multimask_output=True (one valid point), and predict_masks' shapes for both settings."""
    one = np.array([[True, False, False]] * 2)
    got = ours(pair, setup, box_valid=NO_BOX, point_valid=one, multimask=True)
    assert got.low_res_masks.shape[1] == 3
    check("multimask", got, hf_run(pair, setup, [0, 1], points=POINTS[:, :1], labels=LABELS[:, :1], multimask=True))
    # predict_masks' shapes (traced only: an eager run dispatches op by op, slowly).
    for multimask, want in ((False, ((1, 32, 30), (1,))), (True, ((1, 3, 32, 30), (1, 3)))):
        shapes = nnx.eval_shape(lambda m: predict_masks(m, setup["image"][:1, :32, :30], jnp.asarray(BOXES[:1]),
                                                        multimask_output=multimask), pair.model)
        assert tuple(x.shape for x in shapes) == want
