"""The batch contract between any data pipeline and the trainer, plus a random source of it.

A *batch* is a dict of numpy arrays in exactly the format :meth:`Crab.__call__` reads
(static shapes fixed by a :class:`BatchSpec`, so one compile serves every batch)::

    input_ids, attention_mask, position_ids, labels, media_index   [b, S]  int32
    frames        [b, T, 3, H, W] float32   (T = frame_slots, H = W = image_size)
    fbank         [b, A, F, 128]  float32   (A = audio_slots, F = fbank_frames)
    fbank_valid   [b, A]          int32     (real fbank frames of each segment, zero-padded after;
                                             0 = an unused slot)
    mask_positions [b, n_mask]    int32
    gt_mask       [b, 1, H, W]    float32   ({0,1}; class ids for AVSS)
    is_seg, is_avss [b]           bool
    seg_frame     [b]             int32     (frame slot whose CLIP features the seg module reads)
    task_id       [b]             int32     (index into the config's ``data.tasks``; metrics only)

A *packed* batch (``segments`` = P > 0, :mod:`crab_jax.families.crab.packing`) holds up to P
samples per row, right-padded, with two more keys::

    segment_ids      [b, S] int32   (k for the row's k-th sample, 0 for padding)
    segment_task_id  [b, P] int32   (task of each of the row's samples; -1: none)

and ``T`` / ``A`` are the row's frame and audio segment slots (its samples' media one after
another); its rows have no mask to train (``is_seg`` False).

The trainer accepts any iterator with ``__next__`` yielding such dicts and ``bucket_specs()``
(the BatchSpec of every shape it yields), and optionally ``get_state() -> JSON-able dict`` /
``set_state(dict)`` for checkpoint/resume.
:func:`make_random_batches` is such an iterator with random but well-formed content:
placeholders expanded with :mod:`crab_jax.data.text.sequence`, labels on the answer only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crab_jax.data.batch_shapes import check_shapes
from crab_jax.data.random_batches import RandomBatches
from crab_jax.data.text.sequence import MediaBlock, expand_placeholders, left_pad_batch, mask_token_positions
from crab_jax.families.crab.examples import MEL_BINS
from crab_jax.families.crab.model import MULTICLASS_SEG_TASKS, SEG_TASKS, CrabConfig, media_layout
from crab_jax.families.crab.tokens import BOS_TOKEN_ID, EOS_TOKEN_ID
from crab_jax.models.losses import IGNORE_INDEX

DEFAULT_TASKS = ("ave", "avqa", "s4", "avss")
BATCH_KEYS = ("input_ids", "attention_mask", "position_ids", "labels", "media_index", "frames", "fbank",
              "fbank_valid", "mask_positions", "gt_mask", "is_seg", "is_avss", "seg_frame", "task_id")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """Static shapes of one (global) batch.

    Attributes:
      batch: samples per batch ``b``.
      seq_len: token bucket ``S`` after placeholder expansion.
      frame_slots: ``T`` frame slots (a video uses up to T, an image 1).
      audio_slots: ``A`` audio segment slots.
      fbank_frames: ``F`` fbank frames per audio segment (98 for 1 s at 10 ms hop).
      image_size: ``H = W`` of frames and masks.
      segments: samples per packed row ``P`` (0: one sample per row, no segment keys).
    """

    batch: int
    seq_len: int
    frame_slots: int
    audio_slots: int
    fbank_frames: int
    image_size: int
    segments: int = 0

    def shapes(self, num_mask_tokens: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Key -> (shape, dtype) of every array of a batch."""
        b, s, h = self.batch, self.seq_len, self.image_size
        tokens = {k: ((b, s), np.dtype(np.int32)) for k in BATCH_KEYS[:5]}
        if self.segments:
            tokens.update(segment_ids=((b, s), np.dtype(np.int32)),
                          segment_task_id=((b, self.segments), np.dtype(np.int32)))
        return dict(
            tokens,
            frames=((b, self.frame_slots, 3, h, h), np.dtype(np.float32)),
            fbank=((b, self.audio_slots, self.fbank_frames, MEL_BINS), np.dtype(np.float32)),
            fbank_valid=((b, self.audio_slots), np.dtype(np.int32)),
            mask_positions=((b, num_mask_tokens), np.dtype(np.int32)),
            gt_mask=((b, 1, h, h), np.dtype(np.float32)),
            is_seg=((b,), np.dtype(bool)),
            is_avss=((b,), np.dtype(bool)),
            seg_frame=((b,), np.dtype(np.int32)),
            task_id=((b,), np.dtype(np.int32)),
        )


def check_batch(batch: dict, spec: BatchSpec, num_mask_tokens: int, *, source: str = "batch") -> None:
    """Raises naming the first key whose shape differs from ``spec`` (or that is missing)."""
    check_shapes(batch, spec.shapes(num_mask_tokens), spec, source)


def _random_sample(rng: np.random.Generator, cfg: CrabConfig, spec: BatchSpec, task: str, base_vocab: int):
    """One raw (unexpanded) sample: ids, labels, media blocks, media sizes."""
    ids = cfg.special_token_ids
    layout = media_layout(cfg, spec.frame_slots, spec.audio_slots)
    qv, qa = cfg.visual_qformer.num_query_tokens, cfg.audio_qformer.num_query_tokens
    is_seg = task in SEG_TASKS and cfg.seg is not None
    image = is_seg  # segmentation samples show one image, the others a video
    frames = 1 if image else int(rng.integers(1, spec.frame_slots + 1))
    segments = int(rng.integers(1, spec.audio_slots + 1))
    mask_tail = 2 + len(cfg.mask_token_ids) if is_seg else 0
    # What is left for text once media, markers and the mask tail are placed.
    fixed = 1 + 6 + frames * qv + segments * qa + mask_tail + 1
    while fixed > spec.seq_len - 4 and frames > 1:
        frames -= 1
        fixed -= qv
    room = spec.seq_len - fixed
    if room < 4:
        raise ValueError(f"BatchSpec.seq_len {spec.seq_len} is too short for {frames} frame(s) x {qv} + "
                         f"{segments} audio segment(s) x {qa} media rows plus text")
    prompt_len = int(rng.integers(1, room // 2 + 1))
    answer_len = int(rng.integers(1, room - prompt_len))
    text = lambda n: [int(t) for t in rng.integers(3, base_vocab, size=n)]
    visual = "<image>" if image else "<video>"
    kind = visual.strip("<>")
    prompt = ([BOS_TOKEN_ID] + text(prompt_len) + [ids[f"<{kind}_start>"], ids[visual], ids[f"<{kind}_end>"],
              ids["<audio_start>"], ids["<audio>"], ids["<audio_end>"]])
    answer = text(answer_len)
    if is_seg:
        answer += [ids["<mask_start>"], *cfg.mask_token_ids, ids["<mask_end>"]]
    answer += [EOS_TOKEN_ID]
    raw = prompt + answer
    labels = [IGNORE_INDEX] * len(prompt) + answer
    blocks = {ids[visual]: MediaBlock(layout.visual_offset, frames * qv),
              ids["<audio>"]: MediaBlock(layout.audio_offset, segments * qa)}
    return raw, labels, blocks, frames, segments, is_seg


def random_batch(rng: np.random.Generator, spec: BatchSpec, cfg: CrabConfig,
                 tasks: Sequence[str] = DEFAULT_TASKS) -> dict[str, np.ndarray]:
    """One batch with random but well-formed content (see the module docstring)."""
    base_vocab = min(cfg.special_token_ids.values())
    task_ids = rng.integers(0, len(tasks), size=spec.batch)
    samples, raws, seg_flags = [], [], []
    h = spec.image_size
    frames = np.zeros((spec.batch, spec.frame_slots, 3, h, h), np.float32)
    fbank = np.zeros((spec.batch, spec.audio_slots, spec.fbank_frames, MEL_BINS), np.float32)
    fbank_valid = np.zeros((spec.batch, spec.audio_slots), np.int32)
    gt_mask = np.zeros((spec.batch, 1, h, h), np.float32)
    is_avss = np.zeros(spec.batch, bool)
    for i, t in enumerate(task_ids):
        task = tasks[int(t)]
        raw, labels, blocks, n_frames, n_seg, is_seg = _random_sample(rng, cfg, spec, task, base_vocab)
        samples.append(expand_placeholders(raw, labels, blocks))
        raws.append(raw)
        seg_flags.append(is_seg)
        frames[i, :n_frames] = rng.normal(size=(n_frames, 3, h, h))
        fbank[i, :n_seg] = rng.normal(size=(n_seg, spec.fbank_frames, MEL_BINS))
        fbank_valid[i, :n_seg] = spec.fbank_frames
        if is_seg:
            y0, x0 = rng.integers(0, h // 2, size=2)
            y1, x1 = y0 + rng.integers(h // 4, h // 2 + 1), x0 + rng.integers(h // 4, h // 2 + 1)
            is_avss[i] = task in MULTICLASS_SEG_TASKS
            value = float(rng.integers(1, cfg.seg.avss_classes)) if is_avss[i] else 1.0
            gt_mask[i, 0, y0:y1, x0:x1] = value
    batch = left_pad_batch(samples, spec.seq_len, cfg.pad_token_id)
    pad_left = batch.pop("pad_left")
    n_mask = len(cfg.mask_token_ids)
    batch["mask_positions"] = np.stack([
        mask_token_positions(raw, cfg.mask_token_ids, expansion_shift=s.expansion_shift, pad_left=int(p),
                             is_seg=seg, fallback_raw_positions=cfg.nonseg_mask_positions,
                             offset=cfg.mask_position_offset)
        if n_mask else np.zeros((0,), np.int32)
        for raw, s, p, seg in zip(raws, samples, pad_left, seg_flags)]).astype(np.int32)
    batch.update(frames=frames, fbank=fbank, fbank_valid=fbank_valid, gt_mask=gt_mask, is_seg=np.asarray(seg_flags, bool),
                 is_avss=is_avss, seg_frame=np.zeros(spec.batch, np.int32),  # the one image is frame 0
                 task_id=task_ids.astype(np.int32))
    return batch


def make_random_batches(spec: BatchSpec, cfg: CrabConfig, seed: int, *, num_distinct: int = 0,
                        tasks: Sequence[str] = DEFAULT_TASKS) -> RandomBatches:
    """An iterator of random batches in the :meth:`Crab.__call__` format (see :class:`RandomBatches`)."""
    tasks = tuple(tasks)
    return RandomBatches(spec, lambda rng: random_batch(rng, spec, cfg, tasks), seed, num_distinct=num_distinct)
