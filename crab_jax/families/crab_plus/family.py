"""Crab+ as a :class:`~crab_jax.families.base.Family`: the hooks shared code calls, in one place.

Everything here is a reference to the module that does the work: the thinker (model.py),
its presets, the AV-UIE v2 records (``data/records/crab_plus.py``) -> examples -> batches
(examples / collate / example_builder), generation (decoding) and what its answers become
(predictions, evaluation, the scorers of the prediction files, the SAM2 stage's prompts), the
converters.
"""

from __future__ import annotations

from flax import nnx

from crab_jax.config.sections import DataConfig
from crab_jax.data.records.crab_plus import read_crab_plus_records
from crab_jax.data.records.crab_plus_requests import read_crab_plus_requests
from crab_jax.families.base import BatchFormat, Family
from crab_jax.families.crab_plus import batch_spec, decoding, flops, presets, tokens
from crab_jax.families.crab_plus import mask_prompts
from crab_jax.families.crab_plus import chat, collate, evaluation, examples, predictions, scoring
from crab_jax.families.crab_plus.convert.config_io import load_thinker_config
from crab_jax.families.crab_plus.convert.converter import CONVERTER
from crab_jax.families.crab_plus.example_builder import example_builder
from crab_jax.families.crab_plus.token_modality import token_modality
from crab_jax.families.crab_plus.model import ROUTER_TOWERS, CrabPlusConfig, CrabPlusThinker, forward_loss


def build_model(cfg: CrabPlusConfig, rngs: nnx.Rngs) -> CrabPlusThinker:
    return CrabPlusThinker(cfg, rngs=rngs)


def random_spec(data: DataConfig, cfg: CrabPlusConfig, batch: int) -> batch_spec.BatchSpec:
    return batch_spec.spec_for(data, cfg, batch)


def random_batches(spec, cfg: CrabPlusConfig, seed: int, *, num_distinct: int = 0, tasks=batch_spec.DEFAULT_TASKS):
    return batch_spec.make_random_batches(spec, cfg, seed, num_distinct=num_distinct, tasks=tasks or batch_spec.DEFAULT_TASKS)


# A run summary's metric per task: the held-out text metrics (evaluation), then the tables of
# the prediction-file scorers (scoring); the first one a summary holds is reported.
HEADLINE = {t: evaluation.HEADLINE.get(t, ()) + scoring.HEADLINE.get(t, ())
            for t in sorted({*evaluation.HEADLINE, *scoring.HEADLINE})}


FAMILY = Family(
    name="crab_plus",
    model_config=presets.model_config,
    build_model=build_model,
    forward_loss=forward_loss,
    llm_path="model",
    router_towers=ROUTER_TOWERS,
    num_llm_layers=lambda cfg: cfg.text.num_hidden_layers,
    vocab_sizes=lambda cfg: (cfg.text.vocab_size, cfg.text.padded_vocab_size),
    flops=flops.thinker_flops,
    load_tokenizer=chat.load_tokenizer,
    base_vocab_of=tokens.base_vocab_of,
    added_tokens=tokens.ADDED_TOKENS,
    record_texts=examples.record_texts,
    batch=BatchFormat(spec=random_spec, shapes=lambda spec, cfg: spec.shapes(cfg), random_batches=random_batches,
                      check=batch_spec.check_batch, prompt_batch=collate.prompt_batch),
    read_records=read_crab_plus_records,
    example_builder=example_builder,
    pad_token_id=lambda cfg: cfg.tokens.pad,
    generate=decoding.jit_generate,
    score_batch=evaluation.score_batch,
    headline=HEADLINE,
    converter=CONVERTER,
    checkpoint_config=load_thinker_config,
    default_max_new_tokens=predictions.default_max_new_tokens,
    predictions=predictions.predictions,
    prediction_metadata=scoring.prediction_metadata,
    task_scorers=scoring.TASK_SCORERS,
    read_quick_start=read_crab_plus_requests,
    mask_prompts=mask_prompts.mask_prompt,
    token_modality=token_modality,
)
