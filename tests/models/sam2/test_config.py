"""SAM 2.1 presets: the large one has sam2.1_hiera_l.yaml's sizes and HF's parameter shapes."""

import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert.tables.sam2 import sam2_table
from crab_jax.models.sam2.config import Sam2Config, sam2_1_hiera_large, tiny
from crab_jax.models.sam2.model import Sam2ImageModel
from crab_jax.models.state_dict import expected_shapes

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_hf_config_round_trip():
    for cfg in (tiny(), sam2_1_hiera_large()):
        assert Sam2Config.from_hf(transformers.Sam2Config(**cfg.to_hf()).to_dict()) == cfg


def test_tiny_exercises_every_block_kind():
    specs = tiny().vision.backbone.block_specs()
    assert any(s["window"] == 0 for s in specs)
    assert any(s["window"] > 0 and s["query_stride"] for s in specs)
    assert len({s["dim_out"] for s in specs}) == 4


@pytest.mark.slow
def test_large_preset_matches_hf_shapes():
    """The sam2.1_hiera_l.yaml sizes, and every HF parameter of that config maps onto ours."""
    cfg = sam2_1_hiera_large()
    bb = cfg.vision.backbone
    assert (bb.hidden_size, bb.blocks_per_stage, bb.global_attention_blocks, bb.window_size_per_stage) == (
        144, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8))
    assert cfg.vision.backbone_channel_list == (1152, 576, 288, 144) and cfg.image_size == 1024
    assert Sam2Config.from_hf(cfg.to_hf()) == cfg
    hf_cfg = transformers.Sam2Config(**cfg.to_hf())
    with torch.device("meta"):
        hf = transformers.Sam2Model(hf_cfg)
    ours = expected_shapes(nnx.eval_shape(lambda: Sam2ImageModel(cfg, rngs=nnx.Rngs(0))))
    table = sam2_table(cfg)
    seen = set()
    for key, value in hf.state_dict().items():
        rule, jkey, _ = table.torch_key_to_jax(key)
        shape = rule.transform.to_jax(np.empty(tuple(value.shape) if value.ndim else (), np.float32)[...]).shape
        assert tuple(shape) == ours[jkey][0], key
        seen.add(jkey)
    assert seen == set(ours)


def test_original_checkpoint_names():
    """facebookresearch/sam2 key names (sam2.1_hiera_large.pt's "model") -> HF's; memory keys dropped.

    (Checked end to end against the original SAM2ImagePredictor on a tiny random model during
    development: mask logits within 5e-7 of max|ref|; that check needs the sam2 sources.)
    """
    from crab_jax.checkpoints.convert.tables.sam2 import original_to_hf

    z = np.zeros((1, 4), np.float32)
    names = {
        "no_mem_embed": "no_memory_embedding",
        "image_encoder.trunk.patch_embed.proj.weight": "vision_encoder.backbone.patch_embed.projection.weight",
        "image_encoder.trunk.pos_embed_window": "vision_encoder.backbone.pos_embed_window",
        "image_encoder.trunk.blocks.3.norm1.bias": "vision_encoder.backbone.blocks.3.layer_norm1.bias",
        "image_encoder.trunk.blocks.3.attn.qkv.weight": "vision_encoder.backbone.blocks.3.attn.qkv.weight",
        "image_encoder.trunk.blocks.3.proj.weight": "vision_encoder.backbone.blocks.3.proj.weight",
        "image_encoder.trunk.blocks.3.mlp.layers.0.weight": "vision_encoder.backbone.blocks.3.mlp.proj_in.weight",
        "image_encoder.trunk.blocks.3.mlp.layers.1.weight": "vision_encoder.backbone.blocks.3.mlp.proj_out.weight",
        "image_encoder.neck.convs.2.conv.bias": "vision_encoder.neck.convs.2.bias",
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            "shared_image_embedding.positional_embedding",
        "sam_prompt_encoder.mask_downscaling.4.weight": "prompt_encoder.mask_embed.layer_norm2.weight",
        "sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight":
            "mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.weight",
        "sam_mask_decoder.transformer.layers.1.mlp.layers.1.bias": "mask_decoder.transformer.layers.1.mlp.proj_out.bias",
        "sam_mask_decoder.transformer.norm_final_attn.weight": "mask_decoder.transformer.layer_norm_final_attn.weight",
        "sam_mask_decoder.output_upscaling.3.weight": "mask_decoder.upscale_conv2.weight",
        "sam_mask_decoder.iou_prediction_head.layers.0.weight": "mask_decoder.iou_prediction_head.proj_in.weight",
        "sam_mask_decoder.iou_prediction_head.layers.1.weight": "mask_decoder.iou_prediction_head.layers.0.weight",
        "sam_mask_decoder.iou_prediction_head.layers.2.weight": "mask_decoder.iou_prediction_head.proj_out.weight",
        "sam_mask_decoder.obj_score_token.weight": "mask_decoder.obj_score_token.weight",
    }
    state = {k: z for k in names}
    state.update({f"sam_prompt_encoder.point_embeddings.{i}.weight": z + i for i in range(4)})
    state["memory_attention.layers.0.linear1.weight"] = z
    out, dropped = original_to_hf(state)
    assert dropped == ["memory_attention.layers.0.linear1.weight"]
    assert set(out) == set(names.values()) | {"prompt_encoder.point_embed.weight"}
    np.testing.assert_array_equal(out["prompt_encoder.point_embed.weight"], np.arange(4)[:, None] + np.zeros((4, 4)))
    # Every renamed key is one the HF table maps.
    assert all(sam2_table().torch_key_to_jax(k) is not None for k in out)
