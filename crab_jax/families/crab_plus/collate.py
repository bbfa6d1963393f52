"""Crab+ examples -> one static-shape batch (:mod:`crab_jax.families.crab_plus.batch_spec`), and
a training batch cut to its generation prompts.

Collation is the original's processor + ``DataCollatorForOmniDataset`` on the bucket's static
sizes: each row's ids padded to the bucket's token length (**right**, as the original
collates training and test batches; ``padding="left"`` for clean batched generation), every
image / video turned into pixel rows (:func:`~crab_jax.families.crab_plus.frames.patch_rows`)
and every clip's log-mel placed as the feature extractor's batch, then
:func:`~crab_jax.families.crab_plus.layout.thinker_batch` cuts them into the bucket's slots
(``media_slots`` temporal slices, the audio chunks / tokens of ``fbank_frames`` mel frames)
and computes the M-RoPE positions. Fillers (:func:`as_filler`) carry every label -100, so they
add nothing to the LM loss (a mean over labelled tokens).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.families.crab_plus.batch_spec import BatchSpec, audio_slots_for_frames
from crab_jax.families.crab_plus.examples import Example, ExampleSettings
from crab_jax.families.crab_plus.frames import patch_rows, vision_inputs
from crab_jax.families.crab_plus.layout import thinker_batch
from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.models.decoding import PromptBatch
from crab_jax.models.losses import IGNORE_INDEX

PADDING_SIDES = ("left", "right")
# Keys indexed by token slot [b, S] (and position_ids [b, 3, S]) that prompt cutting moves.
TOKEN_ROW_KEYS = ("input_ids", "attention_mask", "media_index")


def as_filler(ex: Example) -> Example:
    """A copy that contributes nothing to any loss (labels -100)."""
    return dataclasses.replace(ex, labels=np.full_like(ex.labels, IGNORE_INDEX))


def blank_example(settings: ExampleSettings, pad_id: int) -> Example:
    """A one-token, media-free filler for a batch whose every record failed to decode."""
    h = settings.frame_size
    return Example(source="<blank>", index=-1, task_id=0, input_ids=np.asarray([pad_id], np.int32),
                   labels=np.asarray([IGNORE_INDEX], np.int32), visual_kind="",
                   frames=np.zeros((0, 3, h, h), np.uint8), mel=np.zeros((settings.mel_bins, 0), np.float32))


def visual_slices(ex: Example, settings: ExampleSettings) -> int:
    return settings.slices_of(ex.frames.shape[0]) if ex.visual_kind else 0


def fits(ex: Example, bucket: Bucket, settings: ExampleSettings) -> str | None:
    """Why ``ex`` does not fit ``bucket`` (None when it fits)."""
    if len(ex.input_ids) > bucket.seq_len:
        return f"{len(ex.input_ids)} tokens after expansion, more than its planned bucket {bucket.seq_len}"
    if ex.mel_frames > bucket.fbank_frames:
        return f"{ex.mel_frames} mel frames, more than its planned bucket's {bucket.fbank_frames}"
    if visual_slices(ex, settings) > bucket.media_slots:
        return (f"{visual_slices(ex, settings)} temporal slices of frames, more than its planned bucket's "
                f"{bucket.media_slots}")
    return None


def bucket_spec(bucket: Bucket, batch: int, cfg: CrabPlusConfig) -> BatchSpec:
    """The static shapes of ``bucket`` (at least one visual slot and one audio chunk)."""
    chunks, tokens = audio_slots_for_frames(cfg, bucket.fbank_frames)
    return BatchSpec(batch=batch, seq_len=bucket.seq_len, visual_slots=max(int(bucket.media_slots), 1),
                     audio_chunk_slots=chunks, audio_token_slots=tokens)


def _token_rows(examples: Sequence[Example], seq_len: int, pad_id: int, padding: str) -> dict[str, np.ndarray]:
    if padding not in PADDING_SIDES:
        raise ValueError(f"padding must be one of {PADDING_SIDES}, got {padding!r}")
    b = len(examples)
    ids = np.full((b, seq_len), pad_id, np.int64)
    labels = np.full((b, seq_len), IGNORE_INDEX, np.int64)
    mask = np.zeros((b, seq_len), np.int64)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        at = slice(0, n) if padding == "right" else slice(seq_len - n, seq_len)
        ids[i, at], labels[i, at], mask[i, at] = ex.input_ids, ex.labels, 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate(examples: Sequence[Example], bucket: Bucket, settings: ExampleSettings, cfg: CrabPlusConfig,
            *, padding: str = "right") -> dict[str, np.ndarray]:
    """Examples (all fitting ``bucket``) -> one batch in the :mod:`~crab_jax.families.crab_plus.batch_spec` format."""
    spec = bucket_spec(bucket, len(examples), cfg)
    inputs: dict[str, Any] = _token_rows(examples, bucket.seq_len, cfg.tokens.pad, padding)
    rows = {kind: [patch_rows(ex.frames, settings.patch) for ex in examples if ex.visual_kind == kind]
            for kind in ("image", "video")}
    inputs.update(vision_inputs(rows["image"], rows["video"], settings.patch))
    clips = [ex.mel for ex in examples if ex.mel_frames]
    if clips:
        longest = max(c.shape[1] for c in clips)
        features = np.zeros((len(clips), settings.mel_bins, longest), np.float32)
        valid = np.zeros((len(clips), longest), np.int32)
        for n, mel in enumerate(clips):
            features[n, :, : mel.shape[1]], valid[n, : mel.shape[1]] = mel, 1
        inputs.update(input_features=features, feature_attention_mask=valid)
    batch = thinker_batch(inputs, cfg, visual_slots=spec.visual_slots, audio_chunk_slots=spec.audio_chunk_slots,
                          audio_token_slots=spec.audio_token_slots)
    batch["task_id"] = np.asarray([ex.task_id for ex in examples], np.int32)
    return batch


# ----------------------------------------------------------------------------- prompts


def prompt_batch(batch: Mapping[str, Any], cfg: CrabPlusConfig, *, padding: str = "left") -> PromptBatch:
    """A collated batch cut to its generation prompts, same shapes (one compile per bucket).

    A training row's prompt ends at its first label: the ``\\n`` after ``<|im_start|>assistant``
    (the original supervises it), which is where the test template's generation prompt ends;
    the answer is the rest of the labelled span (target + ``<|im_end|>``). A row without
    labels (a test record's generation prompt, a filler) keeps its whole sequence. The
    prompts' M-RoPE positions are a prefix of the row's (text after the media only counts
    up), so only ``rope_deltas`` is recomputed; rows are then placed ``padding``-side
    (``"left"``: each row generates as it would alone; ``"right"``: the original's batch —
    rows right-padded to the longest prompt, so a shorter row's first token comes from a pad
    slot — placed at the end of the bucket's slots, whose masked front changes nothing).
    """
    if padding not in PADDING_SIDES:
        raise ValueError(f"padding must be one of {PADDING_SIDES}, got {padding!r}")
    out = {k: np.asarray(v) for k, v in batch.items()}
    labels, mask = out["labels"], out["attention_mask"].astype(bool)
    b, s = labels.shape
    rows = {k: np.zeros_like(out[k]) for k in TOKEN_ROW_KEYS}
    rows["input_ids"][:] = cfg.tokens.pad
    rows["media_index"][:] = -1
    positions = np.ones_like(out["position_ids"])
    deltas = np.zeros((b, 1), np.int32)
    spans, answers, has = [], [], np.zeros(b, bool)
    for i in range(b):
        real = np.flatnonzero(mask[i])
        labelled = np.flatnonzero(labels[i] != IGNORE_INDEX)
        start = int(real[0]) if len(real) else 0
        end = int(labelled[0]) + 1 if len(labelled) else (int(real[-1]) + 1 if len(real) else 0)
        has[i] = len(labelled) > 0
        answers.append(out["input_ids"][i, end:int(labelled[-1]) + 1].astype(np.int32) if has[i]
                       else np.zeros(0, np.int32))
        spans.append((start, end))
    # "right": the original's batch (right-padded to its longest prompt) at the end of the
    # bucket's slots; the slots before it are masked and change nothing.
    offset = s - max((e - a for a, e in spans), default=0)
    for i, (start, end) in enumerate(spans):
        n = end - start
        at = slice(offset, offset + n) if padding == "right" else slice(s - n, s)
        for k in TOKEN_ROW_KEYS:
            rows[k][i, at] = out[k][i, start:end]
        positions[i, :, at] = out["position_ids"][i, :, start:end]
        top = int(positions[i, :, at].max()) if n else -1
        # The decode-step offset of layout.thinker_batch: max position + 1 - valid length - pads.
        deltas[i, 0] = top + 1 - n - (s - n)
    out.update(rows, position_ids=positions.astype(np.int32), rope_deltas=deltas,
               labels=np.full((b, s), IGNORE_INDEX, np.int32))
    return PromptBatch(out, answers, has)
