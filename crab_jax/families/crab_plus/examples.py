"""AV-UIE v2 record -> one variable-size Crab+ :class:`Example` (host side, before bucketing).

What the original's ``OmniDataset`` / ``OmniTestDataset`` + ``Qwen2_5OmniProcessor`` do to one
sample, with the pieces of this package (each tested against the original's outputs):

1. the conversation (:func:`~crab_jax.families.crab_plus.prompts.crab_plus_conversation`):
   training records carry the assistant turn, test records end in the generation prompt;
2. media: the video(s) at ``record.num_frames`` frames resized to ``frame_size`` (a2v: the
   two joined in time into one video), or the image; the audio(s) cropped per task and
   (v2a) joined into one waveform, then Whisper log-mel (:mod:`~crab_jax.data.media.whisper_features`);
3. placeholder expansion by each item's token count, tokenisation, labels on the assistant
   turn (:func:`~crab_jax.families.crab_plus.chat.tokenize_chat`).

Every Crab+ task has exactly one visual item (an image, or one video) and one audio item
after the pairing rule, so an example holds one ``frames`` array and one ``mel`` array.
Frames stay uint8 ``[T, 3, H, W]`` (4x smaller to move between processes); the patch rows are
made at collation (:mod:`~crab_jax.families.crab_plus.collate`).

Plan info (bucketing without decoding frames): token counts follow from the record (frames
-> temporal slices x tokens per slice) and the audio length; only the audio is decoded.

Videos the original would silently replace (its 2-frame retry, its zero video; see
:mod:`~crab_jax.families.crab_plus.frames`) are bad records here, counted with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media.concurrent import run_side_by_side
from crab_jax.data.media.whisper_features import log_mel, num_frames
from crab_jax.data.pipeline.buckets import PlanInfo
from crab_jax.data.records.record import Record, resolve
from crab_jax.families.crab_plus import chat as C
from crab_jax.families.crab_plus.audio_crops import concat_audios, load_task_audio
from crab_jax.families.crab_plus.frames import (PatchSpec, concat_videos, read_image, read_video,
                                                round_nframes)
from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.families.crab_plus.prompts import crab_plus_conversation

VISUAL_KINDS = ("image", "video")


@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    """Everything record -> example needs besides the record and the tokenizer.

    Attributes:
      data_root: folder the record paths are relative to.
      tasks: task names; ``Example.task_id`` indexes this tuple (per-task metrics).
      frame_size: frames / images are resized to ``frame_size``² (Crab+: 224).
      patch: the image processor's patching (patch, temporal patch, merge, mean / std).
      mel_bins: audio features per frame (the audio tower's ``num_mel_bins``).
    """

    data_root: str
    tasks: tuple[str, ...]
    frame_size: int
    patch: PatchSpec
    mel_bins: int

    @classmethod
    def of(cls, cfg: CrabPlusConfig, data_root: str, tasks: Sequence[str]) -> "ExampleSettings":
        v = cfg.vision
        return cls(data_root=str(data_root), tasks=tuple(tasks), frame_size=int(cfg.frame_size),
                   patch=PatchSpec(patch_size=int(v.patch_size), temporal_patch_size=int(v.temporal_patch_size),
                                   merge_size=int(v.spatial_merge_size)),
                   mel_bins=int(cfg.audio.num_mel_bins))

    @property
    def tokens_per_slice(self) -> int:
        side = self.frame_size // self.patch.patch_size
        return side * side // self.patch.merge_size ** 2

    def slices_of(self, frames: int) -> int:
        """Temporal slices of ``frames`` frames (an image's one frame is repeated to a pair)."""
        return -(-int(frames) // self.patch.temporal_patch_size)


@dataclasses.dataclass
class Example:
    """One decoded sample (``n`` tokens after expansion, ``T`` frames, ``F`` mel frames).

    Attributes:
      source: ``"<annotation file>#<entry>"`` of the record.
      index: the record's index in the pipeline's record list (-1 when unknown).
      task_id: index into ``ExampleSettings.tasks``.
      input_ids: ``[n]`` int32, every media placeholder already repeated.
      labels: ``[n]`` int32, -100 except the assistant turn (all -100 for a generation prompt).
      visual_kind: ``"image"`` or ``"video"`` (``""``: no visual item, a filler).
      frames: ``[T, 3, H, W]`` uint8 RGB (an image: ``T = 1``).
      mel: ``[mel_bins, F]`` float32 log-mel of the valid frames (``F = 0``: no audio).
    """

    source: str
    index: int
    task_id: int
    input_ids: np.ndarray
    labels: np.ndarray
    visual_kind: str
    frames: np.ndarray
    mel: np.ndarray

    @property
    def mel_frames(self) -> int:
        return int(self.mel.shape[1])


def task_id_of(record: Record, settings: ExampleSettings) -> int:
    if record.task not in settings.tasks:
        raise BadRecordError(record.source, f"task {record.task!r} is not in data.tasks {list(settings.tasks)}")
    return settings.tasks.index(record.task)


def _generation(record: Record) -> bool:
    """A test record is a generation prompt; a training record carries its target."""
    return record.mode != "train"


def _frames_per_video(record: Record) -> int:
    return round_nframes(int(record.num_frames))


def planned_frames(record: Record) -> int:
    """Frames of the record's visual item as the processor gets it (a2v: both videos)."""
    if record.image_path is not None:
        return 1
    return _frames_per_video(record) * len(record.videos)


def load_audio_item(record: Record, settings: ExampleSettings) -> np.ndarray:
    """The waveform the feature extractor receives: each audio cropped for the task, joined (v2a)."""
    if not record.audios:
        raise BadRecordError(record.source, f"{record.task}: a Crab+ record needs an audio file")
    idx = record.audio.idx if record.audio is not None else None
    waves = [load_task_audio(resolve(settings.data_root, a), record.task, idx) for a in record.audios]
    return concat_audios(*waves)


def load_visual_item(record: Record, settings: ExampleSettings) -> tuple[str, np.ndarray]:
    """``(kind, frames [T, 3, H, W] uint8)`` of the record's image or video(s)."""
    size = settings.frame_size
    if record.image_path is not None:
        return "image", read_image(resolve(settings.data_root, record.image_path), size)
    if not record.videos:
        raise BadRecordError(record.source, f"{record.task}: a Crab+ record needs an image or a video")
    videos = []
    for rel in record.videos:
        path = resolve(settings.data_root, rel)
        got = read_video(path, _frames_per_video(record), size)
        if got.fallback != "none":
            # The original would go on with 2 frames or a zero video; here the record is skipped.
            raise BadRecordError(path, f"video not decodable at {record.num_frames} frames (the original falls back "
                                       f"to {got.fallback!r}): {'; '.join(got.errors)}")
        videos.append(got.frames)
    return "video", concat_videos(videos)


def media_tokens(kind: str, frames: int, mel_frames: int, settings: ExampleSettings) -> C.MediaTokens:
    """LLM tokens of the one visual and one audio item (``C.MediaTokens`` in placeholder order)."""
    visual = [settings.slices_of(frames) * settings.tokens_per_slice]
    return C.MediaTokens(audio=[C.audio_tokens(mel_frames)], image=visual if kind == "image" else (),
                         video=visual if kind == "video" else ())


def tokenize_record(record: Record, tokenizer, settings: ExampleSettings, kind: str, frames: int,
                    mel_frames: int) -> C.ChatSample:
    conv = crab_plus_conversation(record, frame_size=settings.frame_size)
    return C.tokenize_chat(tokenizer, conv, media_tokens(kind, frames, mel_frames, settings), task=record.task,
                           generation=_generation(record), source=record.source)


def plan_info(record: Record, tokenizer, settings: ExampleSettings) -> PlanInfo:
    """Expanded length, mel frames and temporal slices of ``record`` (decodes only the audio)."""
    task_id_of(record, settings)
    mel_frames = num_frames(load_audio_item(record, settings).shape[0])
    kind = "image" if record.image_path is not None else "video"
    frames = planned_frames(record)
    sample = tokenize_record(record, tokenizer, settings, kind, frames, mel_frames)
    return PlanInfo(int(len(sample.input_ids)), int(mel_frames), settings.slices_of(frames))


def build_example(record: Record, tokenizer, settings: ExampleSettings, index: int) -> Example:
    """The decoded :class:`Example` of ``record`` (raises BadRecordError for a bad one)."""
    task_id = task_id_of(record, settings)
    (kind, frames), mel = run_side_by_side([lambda: load_visual_item(record, settings),
                                             lambda: log_mel(load_audio_item(record, settings))])
    sample = tokenize_record(record, tokenizer, settings, kind, frames.shape[0], mel.shape[1])
    labels = sample.labels if sample.labels is not None else np.full_like(sample.input_ids, -100)
    return Example(source=record.source, index=int(index), task_id=task_id,
                   input_ids=sample.input_ids.astype(np.int32), labels=labels.astype(np.int32), visual_kind=kind,
                   frames=np.ascontiguousarray(frames, np.uint8), mel=np.ascontiguousarray(mel, np.float32))


def example_plan_info(ex: Example, settings: ExampleSettings) -> PlanInfo:
    slices = settings.slices_of(ex.frames.shape[0]) if ex.visual_kind else 0
    return PlanInfo(int(len(ex.input_ids)), ex.mel_frames, slices)


def record_texts(record: Record, answer: str | None) -> tuple[str, str | None]:
    """``(prompt, target)`` texts a record trains on (the word tokenizer of synthetic data is
    built from them): the rendered conversation up to the generation prompt, placeholders
    unexpanded, and the target."""
    conv = crab_plus_conversation(record)[:2]  # system + user
    prompt = C.render_task_chat(conv, record.task, add_generation_prompt=True)
    target = answer if answer is not None else record.answer
    return prompt, None if target is None else f"{target}{C.IM_END}"

