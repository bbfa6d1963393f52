"""SAM 2.1 image-path configuration: Hiera trunk + FPN neck, prompt encoder, mask decoder.

Field names follow HF's ``Sam2Config`` sub-configs (``vision_config.backbone_config``,
``vision_config``, ``prompt_encoder_config``, ``mask_decoder_config``) so
:meth:`Sam2Config.from_hf` is a plain read. Only what the image predictor uses is kept
(no memory attention / encoder: Crab+ segments single frames).

Presets: :func:`tiny` (the tests' shapes; every mechanism of the real model is exercised:
windowed and global blocks, q-pooling inside windows and in a global block, window padding,
the dropped lowest-resolution FPN level with its top-down path) and
:func:`sam2_1_hiera_large` (``sam2.1_hiera_l.yaml``: embed_dim 144, num_heads 2, stages
[2, 6, 36, 4], global blocks [23, 33, 43], window_spec [8, 4, 16, 8], background 7x7,
neck d_model 256 over channels [1152, 576, 288, 144], top-down levels [2, 3], scalp 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def _pair(v) -> tuple[int, int]:
    v = tuple(int(x) for x in (v if isinstance(v, (list, tuple)) else (v, v)))
    return (v[0], v[1])


@dataclasses.dataclass(frozen=True)
class HieraConfig:
    """HieraDet trunk (HF ``Sam2HieraDetConfig``)."""

    hidden_size: int = 144
    num_channels: int = 3
    image_size: int = 1024
    patch_kernel_size: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    query_stride: tuple[int, int] = (2, 2)
    window_positional_embedding_background_size: tuple[int, int] = (7, 7)
    num_query_pool_stages: int = 3
    blocks_per_stage: tuple[int, ...] = (2, 6, 36, 4)
    embed_dim_per_stage: tuple[int, ...] = (144, 288, 576, 1152)
    num_attention_heads_per_stage: tuple[int, ...] = (2, 4, 8, 16)
    window_size_per_stage: tuple[int, ...] = (8, 4, 16, 8)
    global_attention_blocks: tuple[int, ...] = (23, 33, 43)
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6

    def block_specs(self) -> list[dict[str, Any]]:
        """One dict per block (HF ``Sam2MultiScaleBlock`` / the original ``Hiera`` rules): a
        stage's first block takes its input width and window from the previous stage, and
        pools queries when ``0 < stage <= num_query_pool_stages``; listed blocks are global
        (window 0)."""
        specs, total = [], 0
        for stage, n in enumerate(self.blocks_per_stage):
            for b in range(n):
                first = stage > 0 and b == 0
                window = self.window_size_per_stage[stage - 1 if first else stage]
                specs.append(dict(
                    dim=self.embed_dim_per_stage[stage - 1 if first else stage],
                    dim_out=self.embed_dim_per_stage[stage],
                    heads=self.num_attention_heads_per_stage[stage],
                    window=0 if total in self.global_attention_blocks else window,
                    query_stride=self.query_stride if first and stage <= self.num_query_pool_stages else None,
                ))
                total += 1
        return specs

    @property
    def stage_ends(self) -> tuple[int, ...]:
        ends, acc = [], -1
        for n in self.blocks_per_stage:
            acc += n
            ends.append(acc)
        return tuple(ends)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Trunk + FPN neck (HF ``Sam2VisionConfig``); ``backbone_channel_list`` is low-res first."""

    backbone: HieraConfig = HieraConfig()
    backbone_channel_list: tuple[int, ...] = (1152, 576, 288, 144)
    backbone_feature_sizes: tuple[tuple[int, int], ...] = ((256, 256), (128, 128), (64, 64))
    fpn_hidden_size: int = 256
    fpn_kernel_size: int = 1
    fpn_stride: int = 1
    fpn_padding: int = 0
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    num_feature_levels: int = 3


@dataclasses.dataclass(frozen=True)
class PromptEncoderConfig:
    hidden_size: int = 256
    image_size: int = 1024
    patch_size: int = 16
    mask_input_channels: int = 16
    num_point_embeddings: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    scale: float = 1.0

    @property
    def embedding_size(self) -> tuple[int, int]:
        """The low-resolution image embedding grid ``(h, w)`` (64x64 for 1024 / 16)."""
        return (self.image_size // self.patch_size,) * 2


@dataclasses.dataclass(frozen=True)
class MaskDecoderConfig:
    hidden_size: int = 256
    hidden_act: str = "gelu"
    mlp_dim: int = 2048
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # SAM2ImagePredictor's build_sam2(apply_postprocessing=True) turns these on.
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98


@dataclasses.dataclass(frozen=True)
class Sam2Config:
    vision: VisionConfig = VisionConfig()
    prompt_encoder: PromptEncoderConfig = PromptEncoderConfig()
    mask_decoder: MaskDecoderConfig = MaskDecoderConfig()
    # SAM2Transforms' ImageNet statistics (images in [0, 1] after ToTensor).
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        v, p, d = self.vision, self.prompt_encoder, self.mask_decoder
        if not (v.fpn_hidden_size == p.hidden_size == d.hidden_size):
            raise ValueError(f"fpn_hidden_size {v.fpn_hidden_size}, prompt {p.hidden_size} and decoder "
                             f"{d.hidden_size} widths must agree")
        if v.backbone.image_size != p.image_size:
            raise ValueError(f"trunk image_size {v.backbone.image_size} != prompt encoder {p.image_size}")
        if d.num_hidden_layers != 2:
            # HF builds the two-way MLP with num_layers=num_hidden_layers; the original's MLP
            # always has 2 layers, so only 2 keeps both readings the same.
            raise ValueError("the two-way transformer depth must be 2 (HF ties its MLP depth to it)")

    @property
    def image_size(self) -> int:
        return self.prompt_encoder.image_size

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> "Sam2Config":
        """From HF ``Sam2Config.to_dict()`` (or a ``config.json``)."""
        vc = dict(hf["vision_config"])
        bb = dict(vc["backbone_config"])
        square = lambda v: _pair(v)[0]  # noqa: E731 (the trunk's convolution is square)
        for k in ("patch_kernel_size", "patch_stride", "patch_padding", "image_size"):
            if len(set(_pair(bb[k]))) != 1:
                raise ValueError(f"non-square {k} {bb[k]} is not supported")
        backbone = HieraConfig(
            hidden_size=bb["hidden_size"], num_channels=bb["num_channels"], image_size=square(bb["image_size"]),
            patch_kernel_size=square(bb["patch_kernel_size"]), patch_stride=square(bb["patch_stride"]),
            patch_padding=square(bb["patch_padding"]), query_stride=_pair(bb["query_stride"]),
            window_positional_embedding_background_size=_pair(bb["window_positional_embedding_background_size"]),
            num_query_pool_stages=bb["num_query_pool_stages"], blocks_per_stage=tuple(bb["blocks_per_stage"]),
            embed_dim_per_stage=tuple(bb["embed_dim_per_stage"]),
            num_attention_heads_per_stage=tuple(bb["num_attention_heads_per_stage"]),
            window_size_per_stage=tuple(bb["window_size_per_stage"]),
            global_attention_blocks=tuple(bb["global_attention_blocks"]), mlp_ratio=float(bb["mlp_ratio"]),
            hidden_act=bb["hidden_act"], layer_norm_eps=float(bb["layer_norm_eps"]))
        vision = VisionConfig(
            backbone=backbone, backbone_channel_list=tuple(vc["backbone_channel_list"]),
            backbone_feature_sizes=tuple(_pair(s) for s in vc["backbone_feature_sizes"]),
            fpn_hidden_size=vc["fpn_hidden_size"], fpn_kernel_size=vc["fpn_kernel_size"],
            fpn_stride=vc["fpn_stride"], fpn_padding=vc["fpn_padding"],
            fpn_top_down_levels=tuple(vc["fpn_top_down_levels"]), num_feature_levels=vc["num_feature_levels"])
        pc = hf["prompt_encoder_config"]
        prompt = PromptEncoderConfig(**{f.name: pc[f.name] for f in dataclasses.fields(PromptEncoderConfig)})
        dc = hf["mask_decoder_config"]
        decoder = MaskDecoderConfig(**{f.name: dc[f.name] for f in dataclasses.fields(MaskDecoderConfig)})
        return cls(vision=vision, prompt_encoder=prompt, mask_decoder=decoder)

    def to_hf(self) -> dict[str, Any]:
        """The HF ``Sam2Config`` keyword arguments of this config (the tests build HF's model from it)."""
        bb = dataclasses.asdict(self.vision.backbone)
        for k in ("patch_kernel_size", "patch_stride", "patch_padding", "image_size"):
            bb[k] = [bb[k], bb[k]]
        for k in ("query_stride", "window_positional_embedding_background_size", "blocks_per_stage",
                  "embed_dim_per_stage", "num_attention_heads_per_stage", "window_size_per_stage",
                  "global_attention_blocks"):
            bb[k] = list(bb[k])
        vc = dataclasses.asdict(self.vision)
        vc["backbone_config"] = bb
        del vc["backbone"]
        vc = {k: ([list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v)
              for k, v in vc.items()}
        return dict(vision_config=vc, prompt_encoder_config=dataclasses.asdict(self.prompt_encoder),
                    mask_decoder_config=dataclasses.asdict(self.mask_decoder))


def sam2_1_hiera_large() -> Sam2Config:
    """``sam2.1_hiera_large.pt`` / ``sam2.1_hiera_l.yaml`` (the defaults above are these sizes)."""
    return Sam2Config()


def tiny() -> Sam2Config:
    """A 64-pixel model with every mechanism of the large one (see the module docstring).

    Blocks (stage, window): 0 (s0, 4 on 16x16), 1 (s1, window 4 of s0, q-pool 16 -> 8),
    2 (s1, 2), 3 (s2, window 2 of s1, q-pool 8 -> 4, pooled windows of 1), 4 (s2, global),
    5 (s2, 4), 6 (s3, window 4 of s2, q-pool 4 -> 2), 7 (s3, 3 on 2x2: padded to 3x3).
    Padding sits in the last stage and no stage's first block is global because HF and the
    original both fail there (a padded window cannot be q-pooled; a pooled global block
    divides by its window 0).
    """
    backbone = HieraConfig(
        hidden_size=8, image_size=64, window_positional_embedding_background_size=(3, 3),
        num_query_pool_stages=3, blocks_per_stage=(1, 2, 3, 2), embed_dim_per_stage=(8, 16, 32, 64),
        num_attention_heads_per_stage=(1, 2, 2, 4), window_size_per_stage=(4, 2, 4, 3),
        global_attention_blocks=(4,), mlp_ratio=2.0)
    vision = VisionConfig(backbone=backbone, backbone_channel_list=(64, 32, 16, 8),
                          backbone_feature_sizes=((16, 16), (8, 8), (4, 4)), fpn_hidden_size=32)
    return Sam2Config(
        vision=vision,
        prompt_encoder=PromptEncoderConfig(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=8),
        mask_decoder=MaskDecoderConfig(hidden_size=32, mlp_dim=48, num_attention_heads=2, iou_head_hidden_dim=24))
