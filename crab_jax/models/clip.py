"""CLIP ViT vision tower: Crab's frozen visual encoder (Hugging Face ``CLIPVisionModel``).

Attribute names follow the Hugging Face state dict, so the converter is a near-identity
map: ``vision_model.embeddings.{class_embedding, patch_embedding, position_embedding}``,
``vision_model.pre_layrnorm`` (HF's spelling), ``vision_model.encoder.layers[i].{self_attn,
layer_norm1, mlp, layer_norm2}`` and ``vision_model.post_layernorm`` (never used by Crab,
kept so a checkpoint round-trips).

Forward (one image, ``P = (image_size / patch_size)**2`` patches of width ``W``)::

    x = [class_embedding ; conv_pxp(pixels)] + position_embedding       # [P+1, W]
    h_0 = pre_layrnorm(x)
    h_k = h_{k-1} + attn(layer_norm1(h_{k-1}));  h_k += fc2(quick_gelu(fc1(layer_norm2(h_k))))

``h_k`` is HF's ``hidden_states[k]``. Crab taps a few of them (``select_layer_list``) and
keeps the patch tokens only (``select_feature='patch'``); the tower runs only up to the
deepest tap, so the last layer of CLIP-L (never tapped by Crab) is never computed.

Crab's encoder wrapper (``VisualEncoder``: ``select_layer_list``, ``select_feature``,
video ``[b, t, 3, H, W]`` in, per tap ``[b, t*P, W]`` out) is :class:`ClipVisualEncoder`
configured by :class:`ClipEncoderConfig`; its ``vision_tower`` attribute carries the
tower, matching Crab's state-dict names ``...visual_encoder.vision_tower.vision_model...``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.attention import ProjectedAttention
from crab_jax.models.layers import Conv2d, Embed, LayerNorm, Linear, activation, normal_init
from crab_jax.parallel.sharding import param

SELECT_FEATURES = ("patch", "cls_patch")

# Hugging Face ``CLIPVisionConfig`` defaults: older full ``CLIPConfig`` files store only the
# fields that differ from these in their ``vision_config`` entry.
_HF_VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    layer_norm_eps=1e-5,
    hidden_act="quick_gelu",
)


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """Sizes of a CLIP vision tower (defaults: OpenAI CLIP ViT-L/14 at 224 px, Crab's tower)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    dtype: Any = jnp.float32         # compute dtype
    param_dtype: Any = jnp.float32   # storage dtype of the weights

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        activation(self.hidden_act)  # fail early on an unknown activation

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + 1  # + class token

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **overrides) -> "ClipVisionConfig":
        """From a HF ``CLIPVisionConfig`` dict or a full ``CLIPConfig`` dict (its ``vision_config``).

        ``overrides`` sets crab_jax-only fields (``dtype``, ``param_dtype``) or replaces any field.
        """
        if "vision_config" in config:  # full CLIPModel config
            config = config["vision_config"] or {}
        elif config.get("model_type") not in (None, "clip_vision_model"):
            raise ValueError(f"expected a CLIP (vision) config, found model_type {config.get('model_type')!r}")
        fields = {name: config.get(name, default) for name, default in _HF_VISION_DEFAULTS.items()}
        fields.update(overrides)
        return cls(**fields)


class ClipVisionEmbeddings(nnx.Module):
    """Class token + patch tokens, plus learned absolute positions (no interpolation)."""

    def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.class_embedding = param(normal_init(1.0), rngs.params(), (cfg.hidden_size,), ("embed",),
                                     cfg.param_dtype)
        # Conv2d(num_channels, width, kernel=stride=patch, bias=False)
        self.patch_embedding = Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size,
                                      use_bias=False, axes=("conv", "conv", "channels", "embed"),
                                      dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.position_embedding = Embed(cfg.num_positions, cfg.hidden_size, axes=("positions", "embed"),
                                        param_dtype=cfg.param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """``[n, C, H, W]`` (NCHW) ``-> [n, 1 + P, width]``; token 0 is the class token."""
        n, _, height, width = pixel_values.shape
        if (height, width) != (self.cfg.image_size, self.cfg.image_size):
            # HF raises too unless asked to interpolate positions, which Crab never does.
            raise ValueError(f"input image size ({height}*{width}) doesn't match the model "
                             f"({self.cfg.image_size}*{self.cfg.image_size})")
        patches = self.patch_embedding(jnp.transpose(pixel_values, (0, 2, 3, 1)))
        # Row-major over the patch grid, as torch's flatten(2).transpose(1, 2).
        patches = patches.reshape(n, self.cfg.num_patches, self.cfg.hidden_size)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (n, 1, self.cfg.hidden_size))
        tokens = jnp.concatenate([cls, patches], axis=1)
        return tokens + self.position_embedding.weight[...].astype(tokens.dtype)


class ClipMLP(nnx.Module):
    def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), **kw)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., width] -> [..., width]``."""
        return self.fc2(self.act(self.fc1(x)))


class ClipEncoderLayer(nnx.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
        ln = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
        # Bidirectional, no mask, scale 1/sqrt(head_dim).
        self.self_attn = ProjectedAttention(cfg.hidden_size, cfg.num_attention_heads, dtype=cfg.dtype,
                                            param_dtype=cfg.param_dtype, rngs=rngs)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, **ln)
        self.mlp = ClipMLP(cfg, rngs=rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, **ln)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[n, seq, width] -> [n, seq, width]``."""
        x = x + self.self_attn(self.layer_norm1(x)).astype(x.dtype)
        return x + self.mlp(self.layer_norm2(x)).astype(x.dtype)


class ClipEncoder(nnx.Module):
    def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([ClipEncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])


class ClipVisionTransformer(nnx.Module):
    """HF ``CLIPVisionTransformer`` (the ``vision_model`` of ``CLIPVisionModel``)."""

    def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
        ln = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
        self.embeddings = ClipVisionEmbeddings(cfg, rngs=rngs)
        self.pre_layrnorm = LayerNorm(cfg.hidden_size, **ln)
        self.encoder = ClipEncoder(cfg, rngs=rngs)
        # Only the pooled class token uses it; Crab never does. Kept for round trips.
        self.post_layernorm = LayerNorm(cfg.hidden_size, **ln)


def normalize_select_layers(select_layers: Sequence[int], num_hidden_layers: int) -> tuple[int, ...]:
    """Hidden-state indices in ``[0, num_hidden_layers]``; negatives count from the end like
    Python indexing into HF's ``hidden_states`` (Crab's default ``[-11, -2, -1]``)."""
    count = num_hidden_layers + 1
    out = []
    for k in select_layers:
        k = int(k)
        if not -count <= k < count:
            raise ValueError(f"select layer {k} out of range for {num_hidden_layers} layers "
                             f"(hidden states 0..{num_hidden_layers})")
        out.append(k % count)
    if not out:
        raise ValueError("select_layers is empty")
    return tuple(out)


class ClipVisionTower(nnx.Module):
    """HF ``CLIPVisionModel``: state paths ``vision_model.<HF name>``."""

    def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_model = ClipVisionTransformer(cfg, rngs=rngs)

    def __call__(
        self,
        pixel_values: jax.Array,
        select_layers: Sequence[int],
        select_feature: str = "patch",
    ) -> jax.Array:
        """Selected hidden states of ``pixel_values``.

        Args:
          pixel_values: ``[n, C, H, W]`` normalised pixels (NCHW, as the data pipeline gives).
          select_layers: hidden-state indices (static): ``k`` = output of layer ``k``, 0 = the
            embeddings after ``pre_layrnorm`` (HF ``hidden_states[k]``); negatives allowed.
          select_feature: ``'patch'`` drops the class token (Crab), ``'cls_patch'`` keeps it.
        Returns:
          ``[len(select_layers), n, P, width]`` (``P + 1`` tokens with ``'cls_patch'``).
        """
        if select_feature not in SELECT_FEATURES:
            raise ValueError(f"unexpected select_feature {select_feature!r}; known: {SELECT_FEATURES}")
        taps = normalize_select_layers(select_layers, self.cfg.num_hidden_layers)
        vm = self.vision_model
        hidden = vm.pre_layrnorm(vm.embeddings(pixel_values))
        states = [hidden]
        for layer in vm.encoder.layers[: max(taps)]:  # nothing past the deepest tap is computed
            hidden = layer(hidden)
            states.append(hidden)
        selected = jnp.stack([states[k] for k in taps])
        return selected[:, :, 1:] if select_feature == "patch" else selected


@dataclasses.dataclass(frozen=True)
class ClipEncoderConfig:
    """Crab's ``VisualEncoder`` settings: the tower plus which hidden states it hands on.

    Crab's model uses ``select_layer_list=(14, 22, 23)`` (of 24 layers) and ``'patch'``.
    """

    vision: ClipVisionConfig = ClipVisionConfig()
    select_layer_list: tuple[int, ...] = (14, 22, 23)
    select_feature: str = "patch"

    def __post_init__(self):
        object.__setattr__(self, "select_layer_list", tuple(int(k) for k in self.select_layer_list))
        normalize_select_layers(self.select_layer_list, self.vision.num_hidden_layers)
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"unexpected select_feature {self.select_feature!r}; known: {SELECT_FEATURES}")


class ClipVisualEncoder(nnx.Module):
    """Crab's ``VisualEncoder``: frozen CLIP tower on every frame, selected taps per clip.

    State paths ``vision_tower.vision_model.<HF name>`` (Crab: ``visual_encoder.vision_tower...``).
    """

    def __init__(self, cfg: ClipEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_tower = ClipVisionTower(cfg.vision, rngs=rngs)

    def __call__(self, video: jax.Array) -> jax.Array:
        """``[b, t, C, H, W]`` frames ``-> [taps, b, t*P, width]``, frame after frame.

        Crab returns one ``[b, t*P, width]`` tensor per tap; here they are stacked.
        The tower is frozen, so no gradient flows into it.
        """
        b, t = video.shape[:2]
        frames = video.reshape(b * t, *video.shape[2:])
        feats = self.vision_tower(frames, self.cfg.select_layer_list, self.cfg.select_feature)
        feats = jax.lax.stop_gradient(feats)
        taps, _, tokens, width = feats.shape
        return feats.reshape(taps, b, t * tokens, width)
