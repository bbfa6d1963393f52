"""``SegConfig``: sizes of Crab's segmentation branch (real Crab values as defaults)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class SegConfig:
    """Sizes of the segmentation branch (real Crab values as defaults)."""

    d_model: int = 4096  # LLM hidden size (input width of ``text_hidden_fcs``)
    vit_dim: int = 1024  # CLIP width of the image taps
    prompt_embed_dim: int = 256  # C, the decoder width
    image_scale_nums: int = 2  # levels
    token_nums_per_scale: int = 3  # prompt tokens averaged per level
    depth: int = 2  # two-way transformer layers
    qg_layers: int = 2  # query generator layers
    avs_query_num: int = 300  # Q learned queries
    low_res_mask_size: int = 112
    image_size: int = 224
    patch_size: int = 14
    binary_classes: int = 1  # ``ms3_s4_classfier`` outputs
    avss_classes: int = 71  # ``avss_classifier`` outputs
    two_way_mlp_dim: int = 2048
    two_way_heads: int = 8
    attention_downsample_rate: int = 2
    query_generator_heads: int = 8
    query_generator_ffn: int = 2048
    pe_scale: float = 1.0  # PositionEmbeddingRandom scale of the gaussian matrices

    @property
    def image_embedding_size(self) -> int:
        """Side of the patch grid (16 for 224 px / 14 px patches)."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_object(self) -> int:
        return self.image_scale_nums * self.token_nums_per_scale

    @property
    def multiseg_scalar(self) -> float:
        return 1.0 / self.token_nums_per_scale

    @property
    def multiscale_scalar(self) -> float:
        return 1.0 / self.image_scale_nums

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SegConfig":
        """Builds from a config dict (e.g. the fixture manifest's); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "num_classes_ctor" in d:
            kw["binary_classes"] = d["num_classes_ctor"]
        cfg = cls(**kw)
        if "image_embedding_size" in d and d["image_embedding_size"] != cfg.image_embedding_size:
            raise ValueError(f"image_embedding_size {d['image_embedding_size']} != "
                             f"image_size // patch_size = {cfg.image_embedding_size}")
        return cfg
