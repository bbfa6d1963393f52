"""The original facebookresearch/sam2 image predictor on a tiny random model (opt-in reference).

Needs the sam2 sources (``SAM2_SOURCE``: a folder holding the ``sam2`` package, e.g. an
extracted checkout); hydra, iopath and torchvision are replaced by the few pieces the image
path touches (torchvision's float ``Resize`` = bilinear with antialias, ``Normalize``,
``ToTensor``), and ``torch.jit.script`` is bypassed while the predictor is built.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F


class _ToTensor:
    def __call__(self, img):
        return torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1).contiguous()


class _Resize(torch.nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = list(size)

    def forward(self, x):
        return F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]


class _Normalize(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def forward(self, x):
        return (x - self.mean) / self.std


def _install_stubs() -> None:
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules.setdefault(name, m)

    class _Hydra:
        @staticmethod
        def instance():
            return types.SimpleNamespace(is_initialized=lambda: True)

    module("hydra", initialize_config_module=lambda *a, **k: None)
    module("hydra.core")
    module("hydra.core.global_hydra", GlobalHydra=_Hydra)
    module("iopath")
    module("iopath.common")
    module("iopath.common.file_io", g_pathmgr=None)
    module("torchvision")
    module("torchvision.transforms", Resize=_Resize, Normalize=_Normalize, ToTensor=_ToTensor)


def original_config(cfg):
    """The tiny config with what the original hard-codes: mlp_ratio 4, heads doubling per stage,
    16 mask channels, a 2048-wide two-way MLP with 8 heads, a 256-wide IoU head."""
    bb = cfg.vision.backbone
    heads = tuple(bb.num_attention_heads_per_stage[0] * 2 ** i for i in range(len(bb.blocks_per_stage)))
    bb = dataclasses.replace(bb, num_attention_heads_per_stage=heads, mlp_ratio=4.0)
    return dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, backbone=bb),
        prompt_encoder=dataclasses.replace(cfg.prompt_encoder, mask_input_channels=16),
        mask_decoder=dataclasses.replace(cfg.mask_decoder, mlp_dim=2048, num_attention_heads=8, iou_head_hidden_dim=256))


def build_predictor(source: str, cfg):
    """``(SAM2ImagePredictor, SAM2Base)`` for ``cfg`` (from :func:`original_config`), random weights
    left to the caller; SAM 2.1-L's flags (high-res features, sigmoid IoU, object-score MLP,
    no_mem_embed added directly, dynamic multimask)."""
    if source not in sys.path:
        sys.path.insert(0, source)
    _install_stubs()
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    bb, d = cfg.vision.backbone, cfg.vision.fpn_hidden_size
    grid = list(cfg.prompt_encoder.embedding_size)
    trunk = Hiera(embed_dim=bb.hidden_size, num_heads=bb.num_attention_heads_per_stage[0],
                  stages=bb.blocks_per_stage, global_att_blocks=bb.global_attention_blocks,
                  window_pos_embed_bkg_spatial_size=bb.window_positional_embedding_background_size,
                  window_spec=bb.window_size_per_stage, q_pool=bb.num_query_pool_stages)
    sine = lambda n: PositionEmbeddingSine(num_pos_feats=n, normalize=True, temperature=10000)  # noqa: E731
    neck = FpnNeck(position_encoding=sine(d), d_model=d, backbone_channel_list=list(cfg.vision.backbone_channel_list),
                   fpn_top_down_levels=list(cfg.vision.fpn_top_down_levels), fpn_interp_model="nearest")
    scalp = len(bb.blocks_per_stage) - cfg.vision.num_feature_levels
    rope = lambda **k: RoPEAttention(rope_theta=10000.0, feat_sizes=grid, embedding_dim=d, num_heads=1,  # noqa: E731
                                     downsample_rate=1, dropout=0.1, **k)
    mem_att = MemoryAttention(d_model=d, pos_enc_at_input=True, num_layers=1, layer=MemoryAttentionLayer(
        activation="relu", cross_attention=rope(rope_k_repeat=True, kv_in_dim=16), d_model=d, dim_feedforward=64,
        dropout=0.1, pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=rope()))
    mem_enc = MemoryEncoder(out_dim=16, position_encoding=sine(16), in_dim=d,
                            mask_downsampler=MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1),
                            fuser=Fuser(layer=CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                                      use_dwconv=True), num_layers=1))
    dec = cfg.mask_decoder
    model = SAM2Base(
        ImageEncoder(trunk=trunk, neck=neck, scalp=scalp), mem_att, mem_enc, num_maskmem=7,
        image_size=cfg.image_size, backbone_stride=cfg.prompt_encoder.patch_size, use_high_res_features_in_sam=True,
        iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True, directly_add_no_mem_embed=True,
        use_obj_ptrs_in_encoder=True, use_mlp_for_obj_ptr_proj=True, fixed_no_obj_ptr=True, multimask_output_in_sam=True,
        use_multimask_token_for_obj_ptr=True, proj_tpos_enc_in_obj_ptrs=True, use_signed_tpos_enc_to_obj_ptrs=True,
        no_obj_embed_spatial=True, sam_mask_decoder_extra_args=dict(
            dynamic_multimask_via_stability=dec.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=dec.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=dec.dynamic_multimask_stability_thresh)).eval()
    script, torch.jit.script = torch.jit.script, (lambda m: m)
    try:
        predictor = SAM2ImagePredictor(model)
    finally:
        torch.jit.script = script
    predictor._bb_feat_sizes = [tuple(s) for s in cfg.vision.backbone_feature_sizes]  # hard-coded for 1024
    return predictor, model
