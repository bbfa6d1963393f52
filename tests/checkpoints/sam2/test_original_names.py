"""HF -> original SAM 2 names: the inverse of original_to_hf (and, opt-in, the original's own keys)."""

import os

import numpy as np
import pytest

from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.tables.sam2 import original_to_hf
from crab_jax.checkpoints.sam2.original_names import VIDEO_ONLY, check_inverse, hf_to_original, original_shapes
from tests.models.sam2.conftest import state_dict
from tests.sam2_tiny import tiny_hf

SOURCE = os.environ.get("SAM2_SOURCE")
TIED = "prompt_encoder.shared_embedding.positional_embedding"


@pytest.fixture(scope="module")
def hf_sd():
    return state_dict(tiny_hf("tiny")[1])


def test_round_trip_through_original_names_is_exact(hf_sd):
    original = hf_to_original(hf_sd)
    assert len(original) == len(hf_sd) - 1 + 3  # the tied copy folded, point_embed [4, C] split in four
    assert original["sam_prompt_encoder.point_embeddings.2.weight"].shape == (1, hf_sd["prompt_encoder.point_embed.weight"].shape[1])
    back, dropped = original_to_hf(original)
    assert dropped == []
    assert set(back) == set(hf_sd) - {TIED}
    for k, v in back.items():
        np.testing.assert_array_equal(v, hf_sd[k], err_msg=k)


def test_mlp_layers_are_renumbered(hf_sd):
    original = hf_to_original(hf_sd)
    head = [k for k in original if k.startswith("sam_mask_decoder.iou_prediction_head.layers.")]
    depth = len({k.split(".")[3] for k in head})
    np.testing.assert_array_equal(original[f"sam_mask_decoder.iou_prediction_head.layers.{depth - 1}.weight"],
                                  hf_sd["mask_decoder.iou_prediction_head.proj_out.weight"])
    np.testing.assert_array_equal(original["sam_mask_decoder.iou_prediction_head.layers.1.weight"],
                                  hf_sd["mask_decoder.iou_prediction_head.layers.0.weight"])


def test_shapes_follow_the_same_names(hf_sd):
    shapes = original_shapes({k: v.shape for k, v in hf_sd.items()})
    assert shapes == {k: v.shape for k, v in hf_to_original(hf_sd).items()}


def test_tied_copies_must_agree_and_unknown_keys_fail(hf_sd):
    bad = dict(hf_sd)
    bad[TIED] = bad[TIED] + 1
    with pytest.raises(MappingError, match="tied"):
        hf_to_original(bad)
    with pytest.raises(MappingError, match="memory_attention.layers.0.weight"):
        hf_to_original({"memory_attention.layers.0.weight": np.zeros(2)})


def test_check_inverse_catches_a_wrong_name(hf_sd):
    original = hf_to_original(hf_sd)
    original["sam_mask_decoder.conv_s9.weight"] = original.pop("sam_mask_decoder.conv_s0.weight")
    with pytest.raises(MappingError, match="disagrees"):
        check_inverse(hf_sd, original)


@pytest.mark.slow
@pytest.mark.skipif(not SOURCE, reason="SAM2_SOURCE (facebookresearch/sam2 sources) not set")
def test_against_the_original_models_keys():
    """The original SAM2Base's image-path keys are exactly hf_to_original's, the rest VIDEO_ONLY."""
    from tests.models.sam2.original_sam2 import build_predictor, original_config
    from crab_jax.models.sam2.config import tiny

    _, model = build_predictor(SOURCE, original_config(tiny()))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    hf, dropped = original_to_hf(sd)
    assert dropped and all(VIDEO_ONLY.search(k) for k in dropped)
    assert not any(VIDEO_ONLY.search(k) for k in hf)
    back = hf_to_original(hf)
    assert set(back) == set(sd) - set(dropped)
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
