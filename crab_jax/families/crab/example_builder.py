"""Crab's :class:`~crab_jax.data.pipeline.builder.ExampleBuilder`: what the shared data pipeline
calls to turn an AV-UIE record into an :class:`~crab_jax.families.crab.examples.Example` and
examples into a batch.

:func:`example_builder` is the family hook (``family.example_builder``): the run's model
config and ``data`` section fix the settings once; the builder (settings, collation
constants, tokenizer) is pickled into every decoding worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from crab_jax.config.sections import DataConfig
from crab_jax.data.pipeline.buckets import Bucket, PlanInfo
from crab_jax.data.records.record import Record
from crab_jax.families.crab import collate as C
from crab_jax.families.crab import examples as E
from crab_jax.families.crab import packing as P
from crab_jax.families.crab import stored_examples as S
from crab_jax.families.crab.batch_spec import BatchSpec
from crab_jax.families.crab.media_slots import resolve_slots
from crab_jax.families.crab.model import CrabConfig, media_layout


# Bumped whenever PlanInfo gains a field plan_info fills (2: frames, audio segments, packable), so an
# older cached plan index is not read back.
PLAN_INFO_VERSION = 2


def settings_from(cfg: CrabConfig, data_root: str | os.PathLike, tasks: Sequence[str], *,
                  frame_slots: int, audio_slots: int) -> E.ExampleSettings:
    """:class:`ExampleSettings` of a model config and the data section's sizes."""
    layout = media_layout(cfg, frame_slots, audio_slots)
    return E.ExampleSettings(
        data_root=os.fspath(data_root), tasks=tuple(tasks), image_size=int(cfg.clip.vision.image_size),
        frame_slots=int(frame_slots), audio_slots=int(audio_slots),
        visual_queries=int(cfg.visual_qformer.num_query_tokens), audio_queries=int(cfg.audio_qformer.num_query_tokens),
        token_ids=dict(cfg.special_token_ids), mask_token_ids=tuple(cfg.mask_token_ids),
        seg_enabled=cfg.seg is not None, visual_offset=int(layout.visual_offset),
        audio_offset=int(layout.audio_offset))


def check_token_ids(tokenizer, cfg: CrabConfig) -> None:
    """The tokenizer's ids of Crab's added tokens must be the model's (else embeddings mismatch)."""
    wrong = {t: (tokenizer.convert_tokens_to_ids(t), i) for t, i in cfg.special_token_ids.items()
             if tokenizer.convert_tokens_to_ids(t) != i}
    if wrong:
        raise ValueError(f"tokenizer and model disagree on added token ids (tokenizer, model): {wrong}")


@dataclasses.dataclass(frozen=True)
class CrabExampleBuilder:
    """Records -> Crab examples -> batches (the :class:`ExampleBuilder` protocol).

    Attributes:
      settings: what decoding needs (data root, tasks, sizes, token ids).
      collation: the model-side constants of collation.
      tokenizer: tokenises the records (None for prepared data, whose ids are stored).
    """

    settings: E.ExampleSettings
    collation: C.CollateConfig
    tokenizer: Any = None

    dataset_name: ClassVar[str] = S.DATASET_NAME
    min_fbank_frames: ClassVar[int] = E.BEATS_PATCH  # shorter audio segments never reach BEATs

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this Crab example builder has no tokenizer (built for prepared data): "
                             "set data.tokenizer to decode records")
        return self.tokenizer

    # -- records -> examples ---------------------------------------------------------
    def plan_info(self, record: Record) -> PlanInfo:
        return E.plan_info(record, self._need_tokenizer(), self.settings)

    def build(self, record: Record, index: int) -> E.Example:
        return E.build_example(record, self._need_tokenizer(), self.settings, index)

    def example_plan_info(self, example: E.Example) -> PlanInfo:
        return E.example_plan_info(example, self.settings)

    # -- examples -> batches -----------------------------------------------------------
    def fits(self, example: E.Example, bucket: Bucket) -> str | None:
        return C.fits(example, bucket, self.settings)

    def filler(self, example: E.Example) -> E.Example:
        return C.as_filler(example)

    def blank(self) -> E.Example:
        return C.blank_example(self.settings, self.collation.pad_token_id)

    def collate(self, examples: Sequence[E.Example], bucket: Bucket) -> dict[str, np.ndarray]:
        return C.collate(examples, bucket, self.settings, self.collation)

    def collate_packed(self, rows: Sequence[Sequence[E.Example]], bucket: Bucket) -> dict[str, np.ndarray]:
        return P.collate_packed(rows, bucket, self.settings, self.collation)

    def bucket_spec(self, bucket: Bucket, batch: int) -> BatchSpec:
        s = self.settings
        if bucket.packed:
            return BatchSpec(batch=batch, seq_len=bucket.seq_len, frame_slots=bucket.frame_slots,
                             audio_slots=bucket.audio_slots, fbank_frames=bucket.fbank_frames, image_size=s.image_size,
                             segments=bucket.segments)
        return BatchSpec(batch=batch, seq_len=bucket.seq_len, frame_slots=s.frame_slots, audio_slots=s.audio_slots,
                         fbank_frames=bucket.fbank_frames, image_size=s.image_size)

    # -- plan-index cache --------------------------------------------------------------
    def cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(f"plan_info v{PLAN_INFO_VERSION}".encode())
        h.update(repr(dataclasses.asdict(self.settings)).encode())
        h.update(json.dumps(sorted(self._need_tokenizer().get_vocab().items())).encode())
        return h.hexdigest()

    def record_files(self, record: Record) -> list[str]:
        return [os.path.join(self.settings.data_root, p) for p in record.media_paths()]

    # -- prepared data -----------------------------------------------------------------
    def stored_settings(self) -> Mapping[str, Any]:
        return S.stored_settings(self.settings)

    def features(self):
        return S.features()

    def to_features(self, example: E.Example) -> dict:
        return S.to_features(example)

    def from_features(self, features: Mapping[str, Any], index: int) -> E.Example:
        return S.from_features(features, index)


def example_builder(cfg: CrabConfig, data: DataConfig, root: str | os.PathLike | None,
                    tokenizer=None) -> CrabExampleBuilder:
    """The family hook: the builder of a run (``root``: the data root the records are relative
    to, None for prepared data; ``tokenizer`` None for prepared data)."""
    if tokenizer is not None:
        check_token_ids(tokenizer, cfg)
    # A slot count below what a task's prompts show rejects every record of it: a start-up error.
    slots = resolve_slots(data.tasks, int(data.frame_slots), int(data.audio_slots))
    settings = settings_from(cfg, root or "", data.tasks, frame_slots=slots.frames, audio_slots=slots.audio_segments)
    return CrabExampleBuilder(settings, C.CollateConfig.from_crab(cfg), tokenizer)
