"""Crab+: the Qwen2.5-Omni thinker (Qwen2.5 LLM with M-RoPE, vision and audio towers) with
I-LoRA in every q/k/v/o/gate/up/down projection of the three towers.

Data flow (a batch of ``b`` samples; ``V`` frame-pair slices, ``C`` audio chunks, ``Ta``
audio token slots per sample; static per bucket)::

    pixel_slices [b, V, h*w, C*2*p*p] --visual (per temporal slice)--> [b, V*h*w/4, d]
    audio_chunks [b, C, 2*n_window, mel] (+ audio_chunk_frames [b, C], audio_pool_index [b, Ta, 2])
        --audio_tower--> [b, Ta, d]
    media rows = concat(visual rows, audio rows)                              [b, M, d]
    inputs_embeds = where(media_index >= 0, media_rows[media_index], embed(input_ids))
    Qwen2 decoder (M-RoPE on position_ids [3, b, S]) -> lm_head -> logits [b, S, V] float32

Each temporal slice of an image or a video is encoded on its own: the original's vision
attention never crosses temporal grid steps (windows lie inside one, the full-attention
blocks are restricted to one), its rotary depends only on the patch's (h, w) and its merger
works on 4 consecutive rows, so this equals the original's one call over all patches while
every shape stays fixed. Placeholder expansion, the row each media token reads
(``media_index``) and the multimodal position ids are host-side numpy
(:mod:`crab_jax.families.crab_plus.layout`, :mod:`crab_jax.models.mrope`).

Reproduced behaviour of the original (fixture README): eager attention with float32 softmax
(audio: the original's softmax runs in the activation dtype; here float32, equal in fp32 and
closer to fp32 in bf16), right padding with pads attending to the valid tokens before them,
the loss over float32 logits as the mean over every label token of the batch. The original's
bf16 inference path fails as released (its adapters stay float32 after ``model.to(bf16)``);
here the whole model follows ``dtype``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.families.base import LossOutput, RouterTower
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.layers import Linear, normal_init
from crab_jax.models.llama import KVCache, LlamaConfig, LlamaModel
from crab_jax.models.losses import lm_loss_from_sums, per_sample_lm_sums
from crab_jax.models.media import splice_media
from crab_jax.models.mrope import RopeTokens
from crab_jax.models.qwen_audio import QwenAudioConfig, QwenAudioEncoder, conv_frame_valid
from crab_jax.models.qwen_vision import QwenVisionConfig, QwenVisionEncoder


@dataclasses.dataclass(frozen=True)
class ThinkerTokens:
    """Token ids of the thinker config (Qwen2.5-Omni: 151643 + offset in the real vocabulary)."""

    pad: int
    eos: int
    audio: int
    image: int
    video: int
    audio_start: int
    audio_end: int
    vision_start: int
    vision_end: int

    @property
    def media(self) -> tuple[int, int, int]:
        """The three placeholder ids whose embeddings the towers' rows replace."""
        return (self.image, self.video, self.audio)


# The towers I-LoRA may go in (``CrabPlusConfig.lora_towers``), by their config field.
LORA_TOWERS = ("text", "vision", "audio")


@dataclasses.dataclass(frozen=True)
class CrabPlusConfig:
    """The thinker's three towers, its adapters and token ids (``hf_config.thinker_config_from_hf``).

    frame_size: frames are resized to ``frame_size``² before patching (Crab+: 224), so every
      temporal slice has the patch grid ``slice_grid``.
    dtype: compute dtype of every tower (weights keep their param dtype); logits and the loss
      are float32.
    lora_towers: the towers that get ``lora`` (any of :data:`LORA_TOWERS`; the released recipe:
      all three). ``("text",)`` is I-LoRA in the LLM only: the vision and audio towers are plain.
    """

    text: LlamaConfig
    vision: QwenVisionConfig
    audio: QwenAudioConfig
    lora: ILoRAConfig | None
    tokens: ThinkerTokens
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    frame_size: int = 224
    dtype: Any = jnp.float32
    lora_towers: tuple[str, ...] = LORA_TOWERS

    def __post_init__(self):
        dtype = jnp.dtype(self.dtype)
        object.__setattr__(self, "dtype", dtype)
        towers = (self.lora_towers,) if isinstance(self.lora_towers, str) else tuple(self.lora_towers)
        unknown = [t for t in towers if t not in LORA_TOWERS]
        if unknown:
            raise ValueError(f"CrabPlusConfig.lora_towers: unknown tower(s) {unknown}; each must be one of "
                             f"{list(LORA_TOWERS)}")
        object.__setattr__(self, "lora_towers", towers)
        # One source of truth: every tower computes in the thinker's dtype.
        for name in ("text", "vision", "audio"):
            object.__setattr__(self, name, dataclasses.replace(getattr(self, name), dtype=dtype))
        if self.frame_size % (self.vision.patch_size * self.vision.spatial_merge_size):
            raise ValueError(f"frame_size {self.frame_size} is not a multiple of patch_size x spatial_merge_size "
                             f"= {self.vision.patch_size * self.vision.spatial_merge_size}")

    def tower_lora(self, tower: str) -> ILoRAConfig | None:
        """The adapter config ``tower`` (one of :data:`LORA_TOWERS`) is built with (None: plain linears)."""
        return self.lora if tower in self.lora_towers else None

    @property
    def slice_grid(self) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of one temporal slice of a ``frame_size``² frame pair."""
        side = self.frame_size // self.vision.patch_size
        return (side, side)

    @property
    def patches_per_slice(self) -> int:
        h, w = self.slice_grid
        return h * w

    @property
    def tokens_per_slice(self) -> int:
        """LLM tokens of one temporal slice (after the 2x2 merge)."""
        return self.patches_per_slice // self.vision.spatial_merge_size ** 2

    @property
    def patch_dim(self) -> int:
        v = self.vision
        return v.in_channels * v.temporal_patch_size * v.patch_size ** 2

    @property
    def rope_tokens(self) -> RopeTokens:
        return RopeTokens(image_token_id=self.tokens.image, video_token_id=self.tokens.video,
                          audio_token_id=self.tokens.audio, vision_start_token_id=self.tokens.vision_start,
                          audio_start_token_id=self.tokens.audio_start,
                          spatial_merge_size=self.vision.spatial_merge_size,
                          position_id_per_seconds=self.position_id_per_seconds)


class ThinkerOutput(NamedTuple):
    logits: jax.Array         # [b, S, V] float32
    hidden: jax.Array         # [b, S, d] after the final norm
    inputs_embeds: jax.Array  # [b, S, d]
    lm_loss: jax.Array | None  # scalar (None without labels)
    lm_sums: tuple[jax.Array, jax.Array] | None  # per-sample NLL sum [b], predicted tokens [b]


class CrabPlusThinker(nnx.Module):
    """The thinker; attribute paths are the torch module paths (``thinker.`` + path in the
    released checkpoint, ``base_model.model.`` + path in ``finetune_weights.bin``)."""

    def __init__(self, cfg: CrabPlusConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = LlamaModel(cfg.text, cfg.tower_lora("text"), rngs=rngs)
        self.lm_head = Linear(cfg.text.hidden_size, cfg.text.padded_vocab_size, use_bias=False,
                              axes=("embed", "vocab"), dtype=cfg.dtype, param_dtype=cfg.text.param_dtype,
                              rngs=rngs, kernel_init=normal_init(0.02))
        self.visual = QwenVisionEncoder(cfg.vision, cfg.tower_lora("vision"), rngs=rngs)
        self.audio_tower = QwenAudioEncoder(cfg.audio, cfg.tower_lora("audio"), rngs=rngs)

    # -- towers --------------------------------------------------------------------------
    def encode_visual(self, pixel_slices: jax.Array) -> jax.Array:
        """``[b, V, h*w, patch_dim]`` -> LLM rows ``[b, V * tokens_per_slice, d]``."""
        b, slots = pixel_slices.shape[:2]
        rows = self.visual(pixel_slices.reshape(b * slots, *pixel_slices.shape[2:]), grid_hw=self.cfg.slice_grid)
        return rows.reshape(b, slots * rows.shape[1], rows.shape[-1])

    def encode_audio(self, chunks: jax.Array, chunk_frames: jax.Array, pool_index: jax.Array) -> jax.Array:
        """Audio chunks -> LLM rows ``[b, Ta, d]``.

        Args:
          chunks: ``[b, C, 2*n_window, mel]`` log-mel chunks (zero beyond each chunk's frames).
          chunk_frames: ``[b, C]`` valid mel frames per chunk (0: unused slot).
          pool_index: ``[b, Ta, 2]`` the two rows (into the sample's flattened chunk outputs
            ``[C * n_window]``) each audio token averages.
        """
        b, slots = chunks.shape[:2]
        frames_out = (chunks.shape[2] - 1) // 2 + 1  # conv2 has stride 2
        offset = (jnp.arange(b, dtype=jnp.int32) * slots * frames_out)[:, None, None]
        rows = self.audio_tower(chunks.reshape(b * slots, *chunks.shape[2:]), chunk_frames.reshape(-1),
                                (pool_index + offset).reshape(-1, 2))
        return rows.reshape(b, pool_index.shape[1], rows.shape[-1])

    def media_rows(self, batch: Mapping[str, jax.Array]) -> jax.Array | None:
        """Visual rows then audio rows ``[b, M, d]`` of the batch's media (None: text only)."""
        parts = []
        if batch.get("pixel_slices") is not None and batch["pixel_slices"].shape[1]:
            parts.append(self.encode_visual(batch["pixel_slices"]))
        if batch.get("audio_chunks") is not None and batch["audio_chunks"].shape[1]:
            parts.append(self.encode_audio(batch["audio_chunks"], batch["audio_chunk_frames"],
                                           batch["audio_pool_index"]))
        return jnp.concatenate(parts, axis=1) if parts else None

    # -- LLM -----------------------------------------------------------------------------
    def embed(self, input_ids: jax.Array, media_rows: jax.Array | None, media_index: jax.Array | None) -> jax.Array:
        text = self.model.embed_tokens(input_ids).astype(self.cfg.dtype)
        return text if media_rows is None else splice_media(text, media_rows, media_index)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """``[b, s, d]`` -> float32 ``[b, s, vocab_size]`` (padded vocabulary rows dropped)."""
        return self.lm_head(hidden)[..., : self.cfg.text.vocab_size].astype(jnp.float32)

    def decode(self, inputs_embeds: jax.Array, attention_mask: jax.Array, position_ids: jax.Array,
               cache: KVCache | None = None):
        """The decoder on embeddings: (logits, hidden[, cache])."""
        hidden, cache = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache)
        return self.logits(hidden), hidden, cache

    def __call__(self, batch: Mapping[str, jax.Array]) -> ThinkerOutput:
        """One static-shape batch (:mod:`crab_jax.families.crab_plus.layout`).

        Keys: ``input_ids, attention_mask [b, S]``, ``position_ids [b, 3, S]``, ``labels [b, S]``
        (optional), ``media_index [b, S]`` (row of the media rows, -1 for text); media (either may
        be absent or have 0 slots): ``pixel_slices [b, V, h*w, patch_dim]``; ``audio_chunks
        [b, C, 2*n_window, mel]``, ``audio_chunk_frames [b, C]``, ``audio_pool_index [b, Ta, 2]``.
        """
        rows = self.media_rows(batch)
        embeds = self.embed(batch["input_ids"], rows, batch.get("media_index"))
        logits, hidden, _ = self.decode(embeds, batch["attention_mask"], stream_major(batch["position_ids"]))
        sums = per_sample_lm_sums(logits, batch["labels"]) if "labels" in batch else None
        return ThinkerOutput(logits, hidden, embeds, None if sums is None else lm_loss_from_sums(*sums), sums)


def stream_major(position_ids: jax.Array) -> jax.Array:
    """A batch's ``[b, 3, S]`` position ids -> the decoder's ``[3, b, S]`` (stream first, as M-RoPE reads them)."""
    return jnp.swapaxes(position_ids, 0, 1).astype(jnp.int32)


def visual_row_valid(batch: Mapping[str, jax.Array], cfg: CrabPlusConfig) -> jax.Array:
    """``[b, V * h*w]`` bool: the vision tower's rows of each sample that are real patches.

    The tower runs on ``[b*V, h*w]`` rows (:meth:`CrabPlusThinker.encode_visual`; a slot's rows
    in window order, all real or all padding): a slot is real when one of the sample's tokens
    reads a row of it (``media_index``); the zero slots past a sample's frames are read by none.
    """
    b, slots, patches = batch["pixel_slices"].shape[:3]
    per_slice = cfg.tokens_per_slice
    index = jnp.where(batch["attention_mask"] > 0, batch["media_index"], -1)     # [b, S]
    slot = jnp.where((index >= 0) & (index < slots * per_slice), index // per_slice, -1)
    used = jnp.any(slot[:, :, None] == jnp.arange(slots)[None, None, :], axis=1)  # [b, V]
    return jnp.repeat(used, patches, axis=1)


def audio_row_valid(batch: Mapping[str, jax.Array], cfg: CrabPlusConfig) -> jax.Array:
    """``[b, C * W]`` bool: the audio tower's rows of each sample that are real conv frames
    (the tower runs on ``[b*C, W]`` rows, :meth:`CrabPlusThinker.encode_audio`)."""
    frames = batch["audio_chunk_frames"]  # [b, C]
    return conv_frame_valid(frames, cfg.audio).reshape(frames.shape[0], -1)


# The encoder towers whose router usage the trainer logs next to the LLM's (``Family.router_towers``).
ROUTER_TOWERS = (
    RouterTower("vision", "visual", lambda cfg: cfg.vision.depth, visual_row_valid),
    RouterTower("audio", "audio_tower", lambda cfg: cfg.audio.encoder_layers, audio_row_valid),
)


def build_model(cfg: CrabPlusConfig, rngs: nnx.Rngs) -> CrabPlusThinker:
    return CrabPlusThinker(cfg, rngs=rngs)


def forward_loss(model: CrabPlusThinker, batch: Mapping[str, jax.Array], with_seg: bool) -> LossOutput:
    """The train step's hook: the LM loss (Crab+ has no mask branch; masks come from SAM2 later)."""
    del with_seg
    out = model(batch)
    return LossOutput(out.lm_loss, out.logits, {"lm_loss": out.lm_loss}, {}, out.lm_sums)
