"""Record -> one variable-size numpy :class:`Example` (host side, before bucketing).

What is decoded follows the record's own specs, never the task name: the prompt's
placeholders say which media the sample shows (``<video>``: ``record.videos[0]`` sampled
at ``record.num_frames``, or ``record.frame_paths``; ``<image>``: ``record.image_path``;
``<audio>``: ``record.audios[0]`` cut by ``record.audio``), the mask comes from
``record.mask_path``.

Fbank length policy (exact, no padding inside BEATs): BEATs embeds the fbank with a VALID
16x16 conv of stride 16, so the frames after the last whole patch never reach the model.
Each segment's fbank is therefore trimmed to ``16 * (F // 16)`` frames (bit-identical model
input to the untrimmed one) (98-frame 1-s segments -> 96, AVQA's 198-frame 2-s windows -> 192,
a 9.5-s AVE clip's 93 -> 80); collation zero-pads it to its batch's longest and the model
masks the padded patches, so tasks with different audio lengths share batches. A segment
shorter than one patch (< 16 frames) is a bad record.

Frames stay uint8 ``[t, H, W, 3]`` here (4x smaller to move between processes); CLIP
normalisation happens at collation (:func:`crab_jax.data.media.decode.clip_preprocess`, which
only normalises an image that already has the CLIP size).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import av
import numpy as np

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media import decode as M
from crab_jax.data.media.concurrent import run_side_by_side
from crab_jax.data.media.fbank import DEFAULT_FBANK, FbankConfig
from crab_jax.data.pipeline.buckets import PlanInfo
from crab_jax.data.records.record import Record, load_answer, resolve
from crab_jax.families.crab.model import MULTICLASS_SEG_TASKS, SEG_TASKS
from crab_jax.families.crab.prompts import tokenize_record

MEL_BINS = DEFAULT_FBANK.num_mel_bins   # fbank bins per frame (BEATs' input)
BEATS_PATCH = 16           # BEATs patch size along time (and mel)
SEG_RECORD_TASKS = SEG_TASKS + ("lvis_seg",)  # records whose target carries <mask_k> tokens
VISUAL_PLACEHOLDERS = ("<video>", "<image>")


@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    """Everything Record -> Example needs besides the record and the tokenizer.

    Attributes:
      data_root: folder the record paths are relative to.
      tasks: task names; ``Example.task_id`` indexes this tuple (per-task metrics).
      image_size: ``H = W`` of frames and masks (the CLIP input size).
      frame_slots, audio_slots: the model's static media buffer sizes (more is a bad record).
      visual_queries, audio_queries: LLM rows per frame / per audio segment (Q-Former queries).
      token_ids: placeholder / mask token ids (``CrabConfig.special_token_ids``).
      mask_token_ids: ``<mask_0..k>`` ids the seg module reads (empty without seg branch).
      seg_enabled: the model has a seg module (else no sample is a segmentation sample).
      visual_offset, audio_offset: first media-buffer row of the visual / audio block
        (:func:`crab_jax.families.crab.model.media_layout` of the slots, computed once by
        :func:`crab_jax.families.crab.example_builder.settings_from`).
      fbank: filterbank settings.
    """

    data_root: str
    tasks: tuple[str, ...]
    image_size: int
    frame_slots: int
    audio_slots: int
    visual_queries: int
    audio_queries: int
    token_ids: Mapping[str, int]
    mask_token_ids: tuple[int, ...]
    seg_enabled: bool
    visual_offset: int
    audio_offset: int
    fbank: FbankConfig = DEFAULT_FBANK

    def placeholder_ids(self) -> dict[str, int]:
        return {name: int(self.token_ids[name]) for name in VISUAL_PLACEHOLDERS + ("<audio>",)}


@dataclasses.dataclass
class Example:
    """One decoded sample, variable sizes (``n`` raw tokens, ``t`` frames, ``a`` segments).

    Attributes:
      source: ``"<annotation file>#<entry>"`` of the record.
      index: the record's index in the pipeline's record list (-1 when unknown).
      task_id: index into ``ExampleSettings.tasks``.
      input_ids, labels: ``[n]`` int32 raw ids (one id per placeholder), labels -100 on the prompt.
      visual: ``[(placeholder id, frames)]`` in order of appearance; frames rows follow this order.
      frames: ``[t, H, W, 3]`` uint8 RGB (t = sum of the visual counts; 0 rows without visuals).
      fbank: ``[a, F, 128]`` float32 normalised fbank, F a multiple of 16 (0 rows without audio).
      gt_mask: ``[1, H, W]`` float32 ({0,1}, class ids for AVSS; zeros without a mask).
      is_seg, is_avss: segmentation sample / multi-class (AVSS) sample.
      seg_frame: row of ``frames`` whose CLIP features the seg module reads (the record's
        ``<image>``, else the ``<video>`` frame the mask belongs to; 0 for other samples).
    """

    source: str
    index: int
    task_id: int
    input_ids: np.ndarray
    labels: np.ndarray
    visual: list[tuple[int, int]]
    frames: np.ndarray
    fbank: np.ndarray
    gt_mask: np.ndarray
    is_seg: bool
    is_avss: bool
    seg_frame: int = 0

    @property
    def fbank_frames(self) -> int:
        """F of the audio segments (0 without audio)."""
        return int(self.fbank.shape[1]) if self.fbank.shape[0] else 0


# ------------------------------------------------------------------------- text


# Records of this mode are generation requests: the prompt alone, no target (hence no mask tokens).
PROMPT_ONLY_MODE = "quick_start"


def tokenize(record: Record, tokenizer, settings: ExampleSettings) -> tuple[np.ndarray, np.ndarray]:
    """``(raw ids [n] int32, labels [n] int32)`` of a training record (the prompt alone, labels
    all -100, for a :data:`PROMPT_ONLY_MODE` record)."""
    answer = None if record.mode == PROMPT_ONLY_MODE else load_answer(record, settings.data_root)
    tok = tokenize_record(tokenizer, record, answer)
    return tok.input_ids.astype(np.int32), tok.labels.astype(np.int32)


def placeholders_in(ids: np.ndarray, settings: ExampleSettings, source: str) -> list[str]:
    """Placeholder names in order of appearance; each may appear at most once."""
    by_id = {v: k for k, v in settings.placeholder_ids().items()}
    found = [by_id[int(t)] for t in ids if int(t) in by_id]
    if len(set(found)) != len(found):
        raise BadRecordError(source, f"prompt repeats a media placeholder ({found}); one of each is supported")
    return found


# ------------------------------------------------------------------------ media


def video_frame_count(record: Record, data_root: str) -> int:
    """Frames of the record's ``<video>``: ``len(frame_paths)`` or Crab's uniform sampling of
    ``num_frames`` over the file's frame count (the container index; no decoding)."""
    if record.frame_paths:
        return len(record.frame_paths)
    if not record.videos:
        raise BadRecordError(record.source, "prompt has <video> but the record has no video or frames")
    path = M.check_file(resolve(data_root, record.videos[0]), "video")
    try:
        container = av.open(path)
    except Exception as e:
        raise BadRecordError(path, f"cannot open video ({type(e).__name__}: {e})") from e
    try:
        if not container.streams.video:
            raise BadRecordError(path, "no video stream")
        vlen = M.count_frames(container, container.streams.video[0])
    except BadRecordError:
        raise
    except Exception as e:
        raise BadRecordError(path, f"cannot read video packets ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    if vlen < M.MIN_VIDEO_FRAMES:
        raise BadRecordError(path, f"video has {vlen} frame(s); at least {M.MIN_VIDEO_FRAMES} needed")
    return len(M.uniform_indices(vlen, record.num_frames))


def _visual_frames(record: Record, name: str, settings: ExampleSettings) -> np.ndarray:
    """``[t, H, W, 3]`` uint8 of one visual placeholder."""
    size = settings.image_size
    if name == "<image>":
        if not record.image_path:
            raise BadRecordError(record.source, "prompt has <image> but the record has no image_path")
        return M.load_image(resolve(settings.data_root, record.image_path), size)[None]
    if record.frame_paths:
        return M.load_frames([resolve(settings.data_root, p) for p in record.frame_paths], size)
    if not record.videos:
        raise BadRecordError(record.source, "prompt has <video> but the record has no video or frames")
    frames, _, _ = M.decode_video(resolve(settings.data_root, record.videos[0]), record.num_frames, size)
    return frames


def trim_to_patches(fbank: np.ndarray, path: str) -> np.ndarray:
    """``[a, F, 128]`` -> ``[a, 16 * (F // 16), 128]`` (BEATs never sees the rest)."""
    keep = BEATS_PATCH * (fbank.shape[1] // BEATS_PATCH)
    if keep == 0:
        raise BadRecordError(path, f"audio segment too short: {fbank.shape[1]} fbank frame(s), "
                                   f"BEATs needs at least {BEATS_PATCH} (one patch)")
    return np.ascontiguousarray(fbank[:, :keep])


def _segments(record: Record, settings: ExampleSettings):
    if not record.audios or record.audio is None:
        raise BadRecordError(record.source, "prompt has <audio> but the record has no audio / AudioSpec")
    path = resolve(settings.data_root, record.audios[0])
    return path, M.audio_segments(record.audio, M.decode_audio(path))


def audio_fbank(record: Record, settings: ExampleSettings) -> np.ndarray:
    """``[a, F, 128]`` float32, F trimmed to whole BEATs patches."""
    path, seg = _segments(record, settings)
    return trim_to_patches(seg.fbank(settings.fbank), path)


def audio_plan(record: Record, settings: ExampleSettings) -> tuple[int, int]:
    """``(segments, trimmed fbank frames)`` from the decoded waveform (no fbank computed)."""
    path, seg = _segments(record, settings)
    frames = settings.fbank.num_frames(int(seg.waveforms.shape[1]))
    keep = BEATS_PATCH * (frames // BEATS_PATCH)
    if keep == 0:
        raise BadRecordError(path, f"audio segment too short: {frames} fbank frame(s), "
                                   f"BEATs needs at least {BEATS_PATCH} (one patch)")
    return int(seg.waveforms.shape[0]), keep


def _check_slots(record: Record, frames: int, segments: int, settings: ExampleSettings) -> None:
    if frames > settings.frame_slots:
        raise BadRecordError(record.source, f"{frames} frames, more than data.frame_slots={settings.frame_slots}")
    if segments > settings.audio_slots:
        raise BadRecordError(record.source, f"{segments} audio segments, more than "
                                            f"data.audio_slots={settings.audio_slots}")


def seg_frame_slot(record: Record, visual: list[tuple[str, int]]) -> int:
    """Row of the sample's frames that the seg module segments (spec A.3.6-A.3.9, A.5).

    ``visual``: ``(placeholder name, frame count)`` of each visual block in prompt order (the
    rows of ``Example.frames``). The ``<image>`` block when the prompt shows one (test / QS
    prompts, Ref-AVS test's video + image); otherwise the frame ``record.frame_idx`` of the
    ``<video>`` (training prompts list the clip's frames and ``frame_idx`` says which one the
    mask belongs to).
    """
    row = 0
    for name, count in visual:
        if name == "<image>":
            return row
        row += count
    if record.frame_idx is None:
        raise BadRecordError(record.source, "segmentation record has neither an <image> nor a frame_idx "
                                            "(which frame does the mask belong to?)")
    row = 0
    for name, count in visual:
        if name == "<video>":
            if not record.frame_paths:
                raise BadRecordError(record.source, "segmentation record's <video> is a video file: frame_idx "
                                                    "must index record.frame_paths")
            if not 0 <= record.frame_idx < count:
                raise BadRecordError(record.source, f"frame_idx {record.frame_idx} is outside the video's "
                                                    f"{count} frames")
            return row + record.frame_idx
        row += count
    raise BadRecordError(record.source, "segmentation record's prompt shows no <image> or <video>")


def is_seg_record(record: Record, settings: ExampleSettings) -> bool:
    return settings.seg_enabled and record.task in SEG_RECORD_TASKS and record.mask_path is not None


def _task_id(record: Record, settings: ExampleSettings) -> int:
    if record.task not in settings.tasks:
        raise ValueError(f"{record.source}: task {record.task!r} is not in data.tasks {settings.tasks}")
    return settings.tasks.index(record.task)


# --------------------------------------------------------------------- entry points


def plan_info(record: Record, tokenizer, settings: ExampleSettings) -> PlanInfo:
    """Token length after expansion and fbank frames, decoding only the audio waveform."""
    ids, _ = tokenize(record, tokenizer, settings)
    names = placeholders_in(ids, settings, record.source)
    frames = sum(1 if n == "<image>" else video_frame_count(record, settings.data_root)
                 for n in names if n in VISUAL_PLACEHOLDERS)
    segments, fbank_frames = audio_plan(record, settings) if "<audio>" in names else (0, 0)
    _check_slots(record, frames, segments, settings)
    expanded = len(ids) - len(names) + frames * settings.visual_queries + segments * settings.audio_queries
    return PlanInfo(int(expanded), int(fbank_frames), frames=int(frames), audio_segments=int(segments),
                    packable=not is_seg_record(record, settings))


def build_example(record: Record, tokenizer, settings: ExampleSettings, index: int = -1) -> Example:
    """Decodes one training record; raises :class:`BadRecordError` for anything unusable."""
    ids, labels = tokenize(record, tokenizer, settings)
    names = placeholders_in(ids, settings, record.source)
    h = settings.image_size
    ph = settings.placeholder_ids()
    seg = is_seg_record(record, settings)
    prompt_only = record.mode == PROMPT_ONLY_MODE  # its GT mask is read, but it has no mask tokens to train
    if seg and not prompt_only:
        missing = [t for t in settings.mask_token_ids if t not in set(ids.tolist())]
        if missing:
            raise BadRecordError(record.source, f"segmentation target lacks mask token id(s) {missing}")
    visual_names = [name for name in names if name in VISUAL_PLACEHOLDERS]
    calls = [functools.partial(_visual_frames, record, name, settings) for name in visual_names]
    with_audio, with_mask = "<audio>" in names, record.mask_path is not None and seg
    if with_audio:
        calls.append(functools.partial(audio_fbank, record, settings))
    if with_mask:
        calls.append(functools.partial(M.load_mask, resolve(settings.data_root, record.mask_path), record.task, h))
    parts = run_side_by_side(calls)
    frame_parts = parts[:len(visual_names)]
    visual = [(name, int(part.shape[0])) for name, part in zip(visual_names, frame_parts)]
    frames = np.concatenate(frame_parts) if frame_parts else np.zeros((0, h, h, 3), np.uint8)
    fbank = parts[len(visual_names)] if with_audio else np.zeros((0, BEATS_PATCH, MEL_BINS), np.float32)
    _check_slots(record, frames.shape[0], fbank.shape[0], settings)
    gt = parts[-1].astype(np.float32) if with_mask else np.zeros((1, h, h), np.float32)
    # Generation requests of a segmentation task need the frame too (their masks are still produced).
    seg_frame = seg_frame_slot(record, visual) if settings.seg_enabled and record.task in SEG_RECORD_TASKS else 0
    return Example(source=record.source, index=int(index), task_id=_task_id(record, settings), input_ids=ids,
                   labels=labels, visual=[(ph[n], c) for n, c in visual], frames=frames.astype(np.uint8),
                   fbank=fbank.astype(np.float32), gt_mask=gt, is_seg=seg and not prompt_only,
                   is_avss=(seg or prompt_only and settings.seg_enabled) and record.task in MULTICLASS_SEG_TASKS,
                   seg_frame=seg_frame)


def example_plan_info(ex: Example, settings: ExampleSettings) -> PlanInfo:
    """:class:`PlanInfo` of an already decoded example (prepared data)."""
    ph = set(settings.placeholder_ids().values())
    n_ph = sum(1 for t in ex.input_ids.tolist() if t in ph)
    expanded = (len(ex.input_ids) - n_ph + ex.frames.shape[0] * settings.visual_queries
                + ex.fbank.shape[0] * settings.audio_queries)
    return PlanInfo(int(expanded), ex.fbank_frames, frames=int(ex.frames.shape[0]), audio_segments=int(ex.fbank.shape[0]),
                    packable=not ex.is_seg)
