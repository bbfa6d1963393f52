"""Crab+'s :class:`~crab_jax.data.pipeline.builder.ExampleBuilder`: what the shared data pipeline
calls to turn an AV-UIE v2 record into an :class:`~crab_jax.families.crab_plus.examples.Example`
and examples into a batch.

:func:`example_builder` is the family hook (``family.example_builder``): the run's model config
and ``data`` section fix the settings once; the builder (settings, model config, tokenizer) is
pickled into every decoding worker.
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
from crab_jax.families.crab_plus import collate as C
from crab_jax.families.crab_plus import examples as E
from crab_jax.families.crab_plus import stored_examples as S
from crab_jax.families.crab_plus.batch_spec import BatchSpec
from crab_jax.families.crab_plus.model import CrabPlusConfig
from crab_jax.families.crab_plus.tokens import ADDED_TOKENS


def check_token_ids(tokenizer, cfg: CrabPlusConfig) -> None:
    """The tokenizer's ids of the tokens the model reads must be the model's (else the media
    splice and the labels go to the wrong rows)."""
    t = cfg.tokens
    wanted = {"<|endoftext|>": t.pad, "<|im_end|>": t.eos, "<|AUDIO|>": t.audio, "<|audio_bos|>": t.audio_start,
              "<|audio_eos|>": t.audio_end, "<|vision_bos|>": t.vision_start, "<|vision_eos|>": t.vision_end,
              "<|IMAGE|>": t.image, "<|VIDEO|>": t.video}
    wrong = {tok: (tokenizer.convert_tokens_to_ids(tok), int(i)) for tok, i in wanted.items()
             if tokenizer.convert_tokens_to_ids(tok) != int(i)}
    if wrong:
        raise ValueError(f"tokenizer and model disagree on Qwen2.5-Omni token ids (tokenizer, model): {wrong}; "
                         f"the tokenizer must carry {len(ADDED_TOKENS)} added tokens in the release's order")


@dataclasses.dataclass(frozen=True)
class CrabPlusExampleBuilder:
    """Records -> Crab+ examples -> batches (the :class:`ExampleBuilder` protocol).

    Attributes:
      settings: what decoding needs (data root, tasks, frame size, patching).
      cfg: the model config (token ids, slot geometry for :func:`~crab_jax.families.crab_plus.layout.thinker_batch`).
      tokenizer: tokenises the records (None for prepared data, whose ids are stored).
      padding: side the token rows are padded on (``"right"``: the original's collators).
    """

    settings: E.ExampleSettings
    cfg: CrabPlusConfig
    tokenizer: Any = None
    padding: str = "right"

    dataset_name: ClassVar[str] = S.DATASET_NAME
    min_fbank_frames: ClassVar[int] = 1  # the audio tower reads any clip of >= 1 mel frame

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this Crab+ example builder has no tokenizer (built for prepared data): "
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
        return C.blank_example(self.settings, self.cfg.tokens.pad)

    def collate(self, examples: Sequence[E.Example], bucket: Bucket) -> dict[str, np.ndarray]:
        return C.collate(examples, bucket, self.settings, self.cfg, padding=self.padding)

    def bucket_spec(self, bucket: Bucket, batch: int) -> BatchSpec:
        return C.bucket_spec(bucket, batch, self.cfg)

    # -- plan-index cache --------------------------------------------------------------
    def cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(repr(dataclasses.asdict(self.settings)).encode())
        h.update(repr(self.cfg.tokens).encode())
        h.update(json.dumps(sorted(self._need_tokenizer().get_vocab().items())).encode())
        return h.hexdigest()

    def record_files(self, record: Record) -> list[str]:
        return [os.path.join(self.settings.data_root, p) for p in record.media_paths()]

    # -- prepared data -----------------------------------------------------------------
    def stored_settings(self) -> Mapping[str, Any]:
        return S.stored_settings(self.settings, self.cfg)

    def features(self):
        return S.features(self.settings)

    def to_features(self, example: E.Example) -> dict:
        return S.to_features(example)

    def from_features(self, features: Mapping[str, Any], index: int) -> E.Example:
        return S.from_features(features, index)


def example_builder(cfg: CrabPlusConfig, data: DataConfig, root: str | os.PathLike | None,
                    tokenizer=None) -> CrabPlusExampleBuilder:
    """The family hook: the builder of a run (``root``: the data root the records are relative
    to, None for prepared data; ``tokenizer`` None for prepared data)."""
    if tokenizer is not None:
        check_token_ids(tokenizer, cfg)
    settings = E.ExampleSettings.of(cfg, os.fspath(root or ""), data.tasks)
    return CrabPlusExampleBuilder(settings, cfg, tokenizer)
