"""SAM 2 image encoder parity with HF ``Sam2Model``: Hiera stages, FPN levels, and the
embeddings the mask decoder consumes (conv_s0 / conv_s1, no_memory_embedding)."""

import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.tables.sam2 import image_path_keys, sam2_table
from crab_jax.models.sam2.hiera import resize_bicubic_nchw, window_partition, window_unpartition
from crab_jax.models.sam2.transforms import preprocess
from crab_jax.models.state_dict import flat_arrays
from tests.conftest import assert_parity
from tests.models.sam2.conftest import hf_pixels, nnx_model

torch = pytest.importorskip("torch")

# fp32 bound for the encoder (the brief: ~1e-5 of max|ref|).
RTOL = 1e-5


def nchw_to_nhwc(x):
    return np.asarray(x.detach().numpy()).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def encoded(pair):
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.standard_normal((2, 3, pair.cfg.image_size, pair.cfg.image_size),
                                                  dtype=np.float32))
    with torch.no_grad():
        stages = pair.hf.vision_encoder.backbone(pixels).intermediate_hidden_states
        fpn = pair.hf.vision_encoder(pixels).fpn_hidden_states
        emb = pair.hf.get_image_embeddings(pixels)

    @nnx.jit
    def run(model, x):
        fpn, stages = model.vision_encoder(x, return_stages=True)
        return fpn, stages, model.image_embeddings(x)

    ours = run(pair.model, pixels.numpy().transpose(0, 2, 3, 1))
    return dict(ref=(fpn, stages, emb), ours=ours)


@pytest.mark.parity
def test_hiera_stages(encoded):
    ref, ours = encoded["ref"][1], encoded["ours"][1]
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert_parity(a, b.numpy(), f"hiera stage {i}", RTOL)


@pytest.mark.parity
def test_fpn_levels(encoded):
    ref, ours = encoded["ref"][0], encoded["ours"][0]
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert_parity(a, nchw_to_nhwc(b), f"fpn level {i}", RTOL)


@pytest.mark.parity
def test_decoder_inputs(encoded):
    # HF get_image_embeddings: [conv_s0(level 0), conv_s1(level 1), level 2 + no_memory_embedding].
    ref, ours = encoded["ref"][2], encoded["ours"][2]
    for name, a, b in zip(ours._fields, ours, ref):
        assert_parity(a, nchw_to_nhwc(b), f"image embeddings {name}", RTOL)
    # The no-memory embedding is really added (a zero one would hide a missing term).
    assert np.abs(encoded["ours"][0][-1] - ours.image_embed).max() > 0.1


def test_bicubic_matches_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 7, 5), dtype=np.float32)
    for size in ((16, 12), (7, 5), (64, 64)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bicubic").numpy()
        assert_parity(resize_bicubic_nchw(x, size), ref, f"bicubic {size}", RTOL)


def test_window_partition_round_trip():
    x = np.arange(2 * 5 * 7 * 3, dtype=np.float32).reshape(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert windows.shape == (2 * 2 * 3, 3, 3, 3) and padded == (6, 9)
    np.testing.assert_array_equal(window_unpartition(windows, 3, padded, (5, 7)), x)
    # The first window is the top-left 3x3 block.
    np.testing.assert_array_equal(windows[0], x[0, :3, :3])


def test_preprocess_matches_sam2_transforms(pair):
    # Crab+'s 224 frame into a 1024 model is an upsampling; here 40x48 into 64.
    image = np.random.default_rng(2).integers(0, 256, (2, 40, 48, 3)).astype(np.float32)
    ref = hf_pixels(image, pair.cfg).numpy().transpose(0, 2, 3, 1)
    ours = preprocess(image, pair.cfg.image_size, pair.cfg.pixel_mean, pair.cfg.pixel_std)
    assert_parity(ours, ref, "preprocess", RTOL)


def test_table_round_trip_and_errors(pair):
    table = sam2_table(pair.cfg)
    back = table.to_torch(flat_arrays(pair.model))
    assert set(back) == set(pair.sd)
    for k, v in pair.sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    # A missing and a stray key are both named.
    broken = dict(pair.sd)
    broken.pop("mask_decoder.conv_s0.weight")
    broken["memory_attention.layers.0.weight"] = np.zeros(3, np.float32)
    with pytest.raises(MappingError, match="conv_s0.weight"):
        nnx_model(pair.cfg, broken)
    assert "memory_attention.layers.0.weight" not in image_path_keys(broken)

