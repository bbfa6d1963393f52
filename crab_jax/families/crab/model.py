"""Crab: CLIP + BEATs encoders, Q-Former projectors, LLaMA with I-LoRA, and the seg module.

Data flow (shapes for a batch of ``b`` samples, ``T`` frame slots, ``A`` audio slots)::

    frames [b, T, 3, H, W] --CLIP taps--> [taps, b, T*P, W] --vl_projector(last tap)--> [b, T*Qv, d]
    fbank  [b, A, F, mel]  --BEATs--> [b, A, N, C] --al_projector--> [b, A*Qa, d]
      (fbank_valid [b, A]: real frames per segment; padded patches are masked in both)
    media rows = concat(visual rows, audio rows)                                  [b, M, d]
    inputs_embeds = where(media_index >= 0, media_rows[media_index], embed(input_ids))
    LLaMA(+I-LoRA) -> logits [b, S, V], hidden [b, S, d]
    hidden[mask_positions] [b, 6, d] + CLIP taps (frame seg_frame) -> seg module -> masks

Placeholder expansion happens on the host (``crab_jax.data.text.sequence``): the model only
gathers, so which tasks are in a batch and how many frames each sample really has never
change a shape. :func:`media_layout` is the contract between the two sides.

Reproduced quirks of the original (defaults; see the fixture README): the visual projector
output of the *last* tap feeds the LLM and the first two raw taps feed the seg module, at the
frame of the record's ``<image>`` (``seg_frame``: the frame whose mask is the target); mask positions are read one token early
(``mask_position_offset=-1``); samples without segmentation still run the mask decoder on
fixed positions, with zero image features, and are excluded from the loss (``seg_chunk > 0``
skips them: the same loss for less work).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.families.base import LossOutput
from crab_jax.models.beats import Beats, BeatsConfig
from crab_jax.models.clip import ClipEncoderConfig, ClipVisualEncoder
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.losses import lm_loss_from_sums, per_sample_lm_sums, per_segment_lm_sums
from crab_jax.models.media import splice_media
from crab_jax.models.llama import LlamaConfig, LlamaForCausalLM
from crab_jax.models.qformer import AudioProjector, QFormerConfig, VisualProjector
from crab_jax.models.selected import map_selected, map_slots
from crab_jax.models.seg.config import SegConfig
from crab_jax.models.seg.losses import combine_mask_terms, mask_loss_terms
from crab_jax.models.seg.module import SegModule

SEG_TASKS = ("s4", "ms3", "avss", "ref-avs")
MULTICLASS_SEG_TASKS = ("avss",)
MEDIA_TOKENS = ("<image>", "<video>", "<audio>")


@dataclasses.dataclass(frozen=True)
class CrabConfig:
    llama: LlamaConfig
    clip: ClipEncoderConfig
    beats: BeatsConfig
    visual_qformer: QFormerConfig
    audio_qformer: QFormerConfig
    lora: ILoRAConfig | None
    seg: SegConfig | None
    special_token_ids: Mapping[str, int]
    pad_token_id: int = 2
    # Which CLIP taps (indices into clip.select_layer_list) go where.
    llm_tap: int = -1
    seg_taps: tuple[int, ...] = (0, 1)
    # -1 reproduces the original (hidden state before each <mask_k>); 0 reads the token itself.
    mask_position_offset: int = -1
    # Compute dtype of the LLM and the encoders (weights keep their param dtype). The seg
    # module and every loss stay float32: masks are compared against 0/1 targets at 224 px.
    dtype: Any = jnp.float32
    # Samples per mask-decoder call in the train forward (a run option, not saved with the
    # weights). 0: every sample, as the original (which decodes and discards masks of samples
    # without segmentation). k > 0: only the segmentation samples, k at a time
    # (crab_jax.models.selected): same loss, work in proportion to the seg samples; the masks of
    # the others are zeros. Best where the decoder is a large per-sample cost (CPU, a GPU).
    seg_chunk: int = 0
    # Frames per CLIP call (a run option). 0: every frame slot, as the original encodes its
    # padded frames. k > 0: only the slots some media token reads (and each seg sample's
    # seg_frame), k at a time (crab_jax.models.selected): the same outputs, CLIP work in
    # proportion to the real frames (an image task fills 1 of the 10 slots).
    frame_chunk: int = 0
    # Audio segments per BEATs call (a run option), the same for the audio slots: 0 = every slot
    # (the original encodes its zero segments); k > 0 = only the slots some media token reads.
    audio_chunk: int = 0

    def __post_init__(self):
        dtype = jnp.dtype(self.dtype)
        object.__setattr__(self, "dtype", dtype)
        # One source of truth: the sub-configs inherit the compute dtype.
        object.__setattr__(self, "llama", dataclasses.replace(self.llama, dtype=dtype))
        vision = dataclasses.replace(self.clip.vision, dtype=dtype)
        object.__setattr__(self, "clip", dataclasses.replace(self.clip, vision=vision))

    @property
    def mask_token_ids(self) -> tuple[int, ...]:
        n = self.seg.tokens_per_object if self.seg is not None else 0
        return tuple(self.special_token_ids[f"<mask_{i}>"] for i in range(n))

    @property
    def nonseg_mask_positions(self) -> tuple[int, ...]:
        """Raw positions the original reads for samples without mask tokens (2, 3, ...)."""
        return tuple(range(2, 2 + len(self.mask_token_ids)))


class MediaLayout(NamedTuple):
    """Row offsets of each placeholder's block in the media buffer of one sample."""

    visual_offset: int
    audio_offset: int
    rows: int


def media_layout(cfg: CrabConfig, frame_slots: int, audio_slots: int) -> MediaLayout:
    """Visual rows first (``frame_slots * Qv``), then audio rows (``audio_slots * Qa``)."""
    visual = frame_slots * cfg.visual_qformer.num_query_tokens
    audio = audio_slots * cfg.audio_qformer.num_query_tokens
    return MediaLayout(0, visual, visual + audio)


class CrabOutput(NamedTuple):
    logits: jax.Array             # [b, S, V] float32
    hidden: jax.Array             # [b, S, d] after the final norm
    inputs_embeds: jax.Array      # [b, S, d]
    lm_loss: jax.Array            # scalar
    lm_sums: tuple[jax.Array, jax.Array]  # per-sample NLL sum, predicted tokens: [b] ([b, P] packed)
    mask_loss: jax.Array | None   # scalar (None without the seg branch)
    mask_terms: jax.Array | None  # [b, 3] (BCE, dice, CE)
    binary_logits: jax.Array | None  # [b, 1, H, W]
    avss_logits: jax.Array | None    # [b, K, H, W]
    pred_embeddings: jax.Array | None  # [b, n_mask, d]


class Crab(nnx.Module):
    """The whole model; attribute names follow the original (``base_model.model.model.*``)."""

    def __init__(self, cfg: CrabConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.llm = LlamaForCausalLM(cfg.llama, cfg.lora, rngs=rngs)
        self.visual_encoder = ClipVisualEncoder(cfg.clip, rngs=rngs)
        self.vl_projector = VisualProjector(cfg.visual_qformer, dtype=cfg.dtype, rngs=rngs)
        self.audio_encoder = Beats(cfg.beats, dtype=cfg.dtype, rngs=rngs)
        self.al_projector = AudioProjector(cfg.audio_qformer, dtype=cfg.dtype, rngs=rngs)
        self.seg_module = SegModule(cfg.seg, rngs=rngs) if cfg.seg is not None else None

    # -- encoders ------------------------------------------------------------------------
    def encode_visual(self, frames: jax.Array, used: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``[b, T, 3, H, W]`` -> (LLM rows ``[b, T*Qv, d]``, CLIP taps ``[taps, b, T*P, W]``).

        ``used [b, T]`` (needs ``cfg.frame_chunk > 0``; :meth:`encode_media` passes it then): CLIP
        runs on those frame slots only, ``frame_chunk`` at a time; the others' taps are zeros
        (their rows are never read). The projector runs on every slot, so its dropout draws do
        not depend on which frames are real.
        """
        if used is None:
            taps = self.visual_encoder(frames)
        else:
            encode = lambda x: jnp.moveaxis(self.visual_encoder(x[:, None]), 0, 1)  # [c, taps, P, W]
            per_frame = map_slots(encode, used, frames, self.cfg.frame_chunk)  # [b, T, taps, P, W]
            b, t, n_taps, p, w = per_frame.shape
            taps = jnp.moveaxis(per_frame, 2, 0).reshape(n_taps, b, t * p, w)
        return self.vl_projector(taps[self.cfg.llm_tap]), taps

    def encode_audio(self, fbank: jax.Array, fbank_valid: jax.Array | None = None,
                     used: jax.Array | None = None) -> jax.Array:
        """``[b, A, F, mel]`` normalised fbank -> LLM rows ``[b, A*Qa, d]`` (segment by segment).

        ``fbank_valid [b, A]``: real frames of each segment, the rest zero padding that neither
        BEATs nor the audio Q-Former attends (the rows equal the unpadded computation); None:
        every frame is real. ``used [b, A]`` (needs ``cfg.audio_chunk > 0``): BEATs runs on those
        slots only, ``audio_chunk`` at a time; the others' features are zeros (their rows are never
        read). The projector runs on every slot, as in :meth:`encode_visual`.
        """
        if used is None:
            features = self.audio_encoder(fbank, valid_frames=fbank_valid)
        else:
            segments = {"fbank": fbank} if fbank_valid is None else {"fbank": fbank, "valid": fbank_valid}
            encode = lambda x: self.audio_encoder(x["fbank"], valid_frames=x.get("valid"))  # [c, tokens, C]
            features = map_slots(encode, used, segments, self.cfg.audio_chunk)
        features = jax.lax.stop_gradient(features)
        mask = None
        if fbank_valid is not None:
            mask = self.audio_encoder.token_mask(fbank_valid, fbank.shape[-2], fbank.shape[-1])
        return self.al_projector(features, mask)

    def encode_media(self, batch: Mapping[str, jax.Array], seg_frame: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
        """The media buffer ``[b, M, d]`` (:func:`media_layout`) and the CLIP taps of a batch.

        ``seg_frame [b]``: the frame slot whose taps each sample's masks need (-1: none), kept
        encoded under ``cfg.frame_chunk``.
        """
        frames = batch["frames"]
        used = None
        if self.cfg.frame_chunk > 0:
            used = frames_in_use(batch["media_index"], frames.shape[1], self.cfg.visual_qformer.num_query_tokens,
                                 seg_frame)
        visual_rows, taps = self.encode_visual(frames, used)
        fbank = batch["fbank"]
        audio_used = None
        if self.cfg.audio_chunk > 0:
            layout = media_layout(self.cfg, frames.shape[1], fbank.shape[1])
            audio_used = slots_read(batch["media_index"], layout.audio_offset, fbank.shape[1],
                                    self.cfg.audio_qformer.num_query_tokens)
        audio_rows = self.encode_audio(fbank, batch.get("fbank_valid"), audio_used)
        return jnp.concatenate([visual_rows, audio_rows], axis=1), taps

    # -- assembly --------------------------------------------------------------------------
    def embed(self, input_ids: jax.Array, media_rows: jax.Array, media_index: jax.Array) -> jax.Array:
        """Splices media rows into the token embeddings with one gather.

        Args:
          input_ids: ``[b, S]``; media slots hold their placeholder id (embedded, then replaced).
          media_rows: ``[b, M, d]``.
          media_index: ``[b, S]`` row of ``media_rows`` for media slots, -1 for text.
        """
        return splice_media(self.llm.model.embed_tokens(input_ids), media_rows, media_index)

    def seg_image_features(self, taps: jax.Array, is_seg: jax.Array, seg_frame: jax.Array) -> list[jax.Array]:
        """Raw CLIP tokens of the seg taps at each sample's segmentation frame, zeroed for samples
        without segmentation.

        Args:
          taps: ``[taps, b, T*P, W]`` (``P`` = ``visual_qformer.tokens_per_frame``).
          is_seg: ``[b]`` bool.
          seg_frame: ``[b]`` int, the frame slot (0..T-1) of the image the mask belongs to.
        Returns:
          one ``[b, patches, W]`` array per seg tap.
        """
        patches = self.cfg.seg.image_embedding_size ** 2
        per_frame = self.cfg.visual_qformer.tokens_per_frame
        keep = is_seg[:, None, None].astype(taps.dtype)
        b = taps.shape[1]
        frame = jnp.asarray(seg_frame, jnp.int32)
        out = []
        for k in self.cfg.seg_taps:
            frames = taps[k].reshape(b, -1, per_frame, taps.shape[-1])  # [b, T, P, W]
            out.append(frames[jnp.arange(b), frame, :patches] * keep)
        return out

    def forward_from_media(
        self,
        *,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        position_ids: jax.Array,
        labels: jax.Array,
        media_rows: jax.Array,
        media_index: jax.Array,
        seg_features: list[jax.Array] | None = None,
        mask_positions: jax.Array | None = None,
        gt_mask: jax.Array | None = None,
        is_seg: jax.Array | None = None,
        is_avss: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        num_segments: int = 1,
    ) -> CrabOutput:
        """LLM (+ seg branch when ``seg_features`` is given) on already-encoded media.

        ``segment_ids [b, S]`` (packed rows of up to ``num_segments`` samples, see
        :meth:`__call__`): attention stays within each sample and ``lm_sums`` are ``[b, P]``.
        """
        embeds = self.embed(input_ids, media_rows, media_index)
        logits, hidden = self.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, return_hidden=True, segment_ids=segment_ids)
        sums = (per_sample_lm_sums(logits, labels) if segment_ids is None
                else per_segment_lm_sums(logits, labels, segment_ids, num_segments))
        loss = lm_loss_from_sums(*sums)
        if seg_features is None or self.seg_module is None:
            return CrabOutput(logits, hidden, embeds, loss, sums, None, None, None, None, None)
        pred = jnp.take_along_axis(hidden, mask_positions[..., None].astype(jnp.int32), axis=1)
        pred = pred.astype(jnp.float32)
        features = [f.astype(jnp.float32) for f in seg_features]
        binary, avss, terms = decode_masks(self.seg_module, pred, features, is_avss, is_seg, gt_mask,
                                           self.cfg.seg_chunk)
        m_loss = combine_mask_terms(terms, is_avss, is_seg)
        return CrabOutput(logits, hidden, embeds, loss, sums, m_loss, terms, binary, avss, pred)

    def __call__(self, batch: Mapping[str, jax.Array], *, with_seg: bool = True) -> CrabOutput:
        """One static-shape batch (see :func:`media_layout` and ``crab_jax.data.text.sequence``).

        ``batch`` keys: ``input_ids, attention_mask, position_ids, labels, media_index``
        ``[b, S]``; ``frames [b, T, 3, H, W]``; ``fbank [b, A, F, mel]`` (+ ``fbank_valid [b, A]``,
        the real frames of each zero-padded segment; absent: all real); with the seg branch
        also ``mask_positions [b, n_mask]``, ``gt_mask [b, 1, H, W]``, ``is_seg, is_avss [b]``,
        ``seg_frame [b]`` (the frame slot of the image each mask belongs to).

        A packed batch (:mod:`crab_jax.families.crab.packing`) also holds ``segment_ids [b, S]``
        (``k`` for the row's ``k``-th sample, 0 for padding) and ``segment_task_id [b, P]``: each
        row's media buffer holds its samples' frames and audio segments one after another, and
        ``media_index`` points every sample's media tokens into it, so the encoders run on real
        media only and the model is otherwise unchanged.
        """
        with_seg = with_seg and self.seg_module is not None
        seg_frame = jnp.where(batch["is_seg"], batch["seg_frame"], -1) if with_seg else None
        media_rows, taps = self.encode_media(batch, seg_frame)
        seg_inputs: dict[str, Any] = {}
        if with_seg:
            seg_inputs = dict(
                seg_features=self.seg_image_features(taps, batch["is_seg"], batch["seg_frame"]),
                mask_positions=batch["mask_positions"], gt_mask=batch["gt_mask"],
                is_seg=batch["is_seg"], is_avss=batch["is_avss"],
            )
        return self.forward_from_media(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"], labels=batch["labels"],
            media_rows=media_rows, media_index=batch["media_index"], **seg_inputs,
            **packed_inputs(batch),
        )

    def total_loss(self, out: CrabOutput) -> jax.Array:
        """``lm_loss + mask_loss`` as the original sums them (mask loss weight 1)."""
        return out.lm_loss if out.mask_loss is None else out.lm_loss + out.mask_loss


def slots_read(media_index: jax.Array, first_row: int, slots: int, rows_per_slot: int) -> jax.Array:
    """``[b, slots]`` bool: the media slots whose rows some media token reads, slot ``t`` being
    rows ``[first_row + t*rows_per_slot, first_row + (t+1)*rows_per_slot)`` of the media buffer
    (``media_index [b, S]``, -1 for text)."""
    index = media_index.astype(jnp.int32) - first_row
    slot = jnp.where((index >= 0) & (index < slots * rows_per_slot), index // rows_per_slot, -1)
    return jnp.any(slot[:, :, None] == jnp.arange(slots, dtype=jnp.int32), axis=1)


def frames_in_use(media_index: jax.Array, frame_slots: int, rows_per_frame: int,
                  seg_frame: jax.Array | None = None) -> jax.Array:
    """``[b, T]`` bool: the frame slots whose projector rows some media token reads
    (:func:`slots_read` of the visual rows), and ``seg_frame [b]`` (-1: none)."""
    used = slots_read(media_index, 0, frame_slots, rows_per_frame)
    if seg_frame is not None:
        used = used | (jnp.asarray(seg_frame, jnp.int32)[:, None] == jnp.arange(frame_slots, dtype=jnp.int32))
    return used


def decode_masks(seg_module: SegModule, pred: jax.Array, features: list[jax.Array], is_avss: jax.Array,
                 is_seg: jax.Array, gt_mask: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The seg module and the per-sample mask loss terms of a batch.

    ``pred [b, n_mask, d]`` float32, ``features``: one ``[b, patches, W]`` per seg tap,
    ``is_avss, is_seg [b]``, ``gt_mask [b, 1, H, W]``; ``chunk`` as :attr:`CrabConfig.seg_chunk`
    (0: every sample). Returns ``binary_logits [b, 1, H, W]``, ``avss_logits [b, K, H, W]``,
    ``terms [b, 3]``.
    """
    def decode(x):
        seg = seg_module(x["pred"], x["features"], x["is_avss"])
        terms = mask_loss_terms(seg.binary_logits, seg.avss_logits, x["gt_mask"], x["is_avss"], x["is_seg"])
        return seg.binary_logits, seg.avss_logits, terms

    inputs = dict(pred=pred, features=features, is_avss=is_avss, is_seg=is_seg, gt_mask=gt_mask)
    return map_selected(decode, is_seg, inputs, chunk) if chunk > 0 else decode(inputs)


def packed_inputs(batch: Mapping[str, jax.Array]) -> dict[str, Any]:
    """``segment_ids`` and ``num_segments`` of a packed batch; {} for an unpacked one."""
    if "segment_ids" not in batch:
        return {}
    return {"segment_ids": batch["segment_ids"], "num_segments": int(batch["segment_task_id"].shape[1])}


def forward_loss(model: Crab, batch: Mapping[str, jax.Array], with_seg: bool) -> LossOutput:
    """The family hook of the train step: one forward pass and what the step logs.

    ``terms``: ``lm_loss`` and ``mask_loss`` (0 without the seg branch); ``per_sample``:
    ``mask_loss [b]`` = BCE + 0.5 dice + CE of each sample (the original's weights), summed
    per task by the step.
    """
    out = model(batch, with_seg=with_seg)
    terms = {"lm_loss": out.lm_loss, "mask_loss": jnp.zeros(()) if out.mask_loss is None else out.mask_loss}
    per_sample = {}
    if out.mask_terms is not None:
        per_sample["mask_loss"] = out.mask_terms[:, 0] + 0.5 * out.mask_terms[:, 1] + out.mask_terms[:, 2]
    return LossOutput(model.total_loss(out), out.logits, terms, per_sample, out.lm_sums)
