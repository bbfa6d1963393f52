"""SAM 2's FPN neck and the vision encoder (trunk + neck) as the image predictor uses it.

HF ``Sam2VisionNeck``: ``convs.{j}`` projects stage ``n − j`` (lowest resolution first) to
``fpn_hidden_size``; a level listed in ``fpn_top_down_levels`` (and not the lowest) adds the
nearest-×2 upsampled level below it. The last ``num_feature_levels`` levels are kept,
high-resolution first (the original's ``scalp``). The neck's sine position encodings feed
only the video memory path, so they are not computed here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.layers import Conv2d
from crab_jax.models.sam2.config import VisionConfig
from crab_jax.models.sam2.hiera import HieraDet


def upsample_nearest2(x: jax.Array) -> jax.Array:
    """torch ``interpolate(scale_factor=2, mode='nearest')`` on ``[b, h, w, c] -> [b, 2h, 2w, c]``."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class VisionNeck(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.top_down = tuple(cfg.fpn_top_down_levels)
        self.convs = nnx.List([
            Conv2d(c, cfg.fpn_hidden_size, cfg.fpn_kernel_size, stride=cfg.fpn_stride, padding=cfg.fpn_padding,
                   rngs=rngs)
            for c in cfg.backbone_channel_list
        ])

    def __call__(self, stages: list[jax.Array]) -> list[jax.Array]:
        """Stage maps (high-res first) -> FPN maps ``[b, h_i, w_i, fpn]`` in the same order."""
        n = len(self.convs) - 1
        out = [None] * (n + 1)
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](stages[i])
            if i in self.top_down and i != n:
                prev = lateral + upsample_nearest2(prev.astype(jnp.float32)).astype(lateral.dtype)
            else:
                prev = lateral
            out[i] = prev
        return out


class VisionEncoder(nnx.Module):
    """``backbone`` (HieraDet) + ``neck``; HF ``Sam2VisionModel``'s parameter paths."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.num_feature_levels = cfg.num_feature_levels
        self.backbone = HieraDet(cfg.backbone, rngs=rngs)
        self.neck = VisionNeck(cfg, rngs=rngs)

    def __call__(self, pixels: jax.Array, *, return_stages: bool = False):
        """``[b, S, S, 3]`` normalised pixels -> the kept FPN maps, high-res first
        (``[b, S/4, S/4, C]``, ``[b, S/8, ...]``, ``[b, S/16, ...]`` for SAM 2); with
        ``return_stages`` also the trunk's stage outputs."""
        stages = self.backbone(pixels)
        fpn = self.neck(stages)[: self.num_feature_levels]
        return (fpn, stages) if return_stages else fpn
