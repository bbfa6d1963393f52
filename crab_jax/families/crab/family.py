"""Crab as a :class:`~crab_jax.families.base.Family`: the hooks shared code calls, in one place.

Everything here is a reference to the module that does the work; this file only says which
Crab function answers which question of the seam.
"""

from __future__ import annotations

from flax import nnx

from crab_jax.config.sections import DataConfig
from crab_jax.data.records.quick_start import read_quick_start
from crab_jax.data.records.select import read_records
from crab_jax.families.base import BatchFormat, Family
from crab_jax.families.crab.convert.converter import CONVERTER
from crab_jax.families.crab.example_builder import example_builder
from crab_jax.families.crab.media_slots import resolve_slots
from crab_jax.families.crab import batch_spec, decoding, evaluation, flops, presets, prompts, tokens
from crab_jax.families.crab import config_io, predictions
from crab_jax.families.crab import scoring
from crab_jax.families.crab.token_modality import token_modality
from crab_jax.families.crab.model import Crab, CrabConfig, forward_loss


def build_model(cfg: CrabConfig, rngs: nnx.Rngs) -> Crab:
    return Crab(cfg, rngs=rngs)


def random_spec(data: DataConfig, cfg: CrabConfig, batch: int) -> batch_spec.BatchSpec:
    """The ``random`` source's one shape: the run's token length and media slots (0: from the tasks)."""
    slots = resolve_slots(data.tasks, int(data.frame_slots), int(data.audio_slots), check=False)
    return batch_spec.BatchSpec(batch=batch, seq_len=int(data.seq_len), frame_slots=slots.frames,
                                audio_slots=slots.audio_segments, fbank_frames=int(data.fbank_frames),
                                image_size=cfg.clip.vision.image_size)


def packed_spec(data: DataConfig, cfg: CrabConfig, batch: int) -> batch_spec.BatchSpec:
    """The packed bucket's shape from the config alone (``data.packing``; see ``BatchFormat.packed_spec``)."""
    p = data.packing
    slots = resolve_slots(data.tasks, int(data.frame_slots), int(data.audio_slots), check=False)
    return batch_spec.BatchSpec(batch=batch, seq_len=int(p.seq_len),
                                frame_slots=int(p.frame_slots) or slots.frames * int(p.samples),
                                audio_slots=int(p.audio_slots) or slots.audio_segments * int(p.samples),
                                fbank_frames=int(data.fbank_frames), image_size=cfg.clip.vision.image_size,
                                segments=int(p.samples))


def batch_shapes(spec: batch_spec.BatchSpec, cfg: CrabConfig) -> dict:
    return spec.shapes(len(cfg.mask_token_ids))


def check_batch(batch, spec: batch_spec.BatchSpec, cfg: CrabConfig, source: str = "batch") -> None:
    batch_spec.check_batch(batch, spec, len(cfg.mask_token_ids), source=source)


def random_batches(spec, cfg: CrabConfig, seed: int, *, num_distinct: int = 0, tasks=batch_spec.DEFAULT_TASKS):
    return batch_spec.make_random_batches(spec, cfg, seed, num_distinct=num_distinct, tasks=tasks)


FAMILY = Family(
    name="crab",
    model_config=presets.model_config,
    build_model=build_model,
    forward_loss=forward_loss,
    llm_path="llm",
    num_llm_layers=lambda cfg: cfg.llama.num_hidden_layers,
    vocab_sizes=lambda cfg: (cfg.llama.vocab_size, cfg.llama.padded_vocab_size),
    flops=flops.llm_flops,
    load_tokenizer=prompts.load_tokenizer,
    base_vocab_of=tokens.base_vocab_of,
    added_tokens=tokens.ADDED_TOKENS,
    record_texts=prompts.build_crab_text,
    batch=BatchFormat(spec=random_spec, packed_spec=packed_spec, shapes=batch_shapes, random_batches=random_batches,
                      check=check_batch,
                      prompt_batch=evaluation.prompt_batch),
    read_records=read_records,
    example_builder=example_builder,
    pad_token_id=lambda cfg: cfg.pad_token_id,
    generate=decoding.jit_generate,
    score_batch=evaluation.score_batch,
    headline=evaluation.HEADLINE,
    converter=CONVERTER,
    checkpoint_config=config_io.load_crab_config,
    default_max_new_tokens=predictions.default_max_new_tokens,
    predictions=predictions.predictions,
    prediction_metadata=scoring.prediction_metadata,
    task_scorers=scoring.TASK_SCORERS,
    unused_modules=presets.unused_modules,
    read_quick_start=read_quick_start,
    token_modality=token_modality,
)
