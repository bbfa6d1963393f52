"""Crab+ as a :class:`~crab_jax.families.base.Family`: the hooks shared code calls, in one place.

Built so far (issue 13): the thinker, its presets, the random data source, training on it,
greedy / sampled generation, the converters. The AV-UIE v2 records, the example builder,
scoring and the SAM2 stage are the next step (issue 14); until then those hooks raise
:class:`NotBuiltYet` naming what to use instead.
"""

from __future__ import annotations

import os

from flax import nnx
from transformers import AutoTokenizer

from crab_jax.config.sections import DataConfig
from crab_jax.families.base import BatchFormat, Family
from crab_jax.families.crab_plus import batch_spec, decoding, flops, presets, tokens
from crab_jax.families.crab_plus.convert.converter import CONVERTER
from crab_jax.families.crab_plus.model import CrabPlusConfig, CrabPlusThinker, forward_loss


class NotBuiltYet(NotImplementedError):
    """A Crab+ hook that needs the AV-UIE v2 pipeline (crab_jax issue 14)."""


def _not_built(what: str):
    def hook(*args, **kwargs):
        raise NotBuiltYet(f"Crab+ {what} is not built yet (AV-UIE v2 data, scoring and SAM2 come next); "
                          "train Crab+ on data.source='random' meanwhile")
    return hook


def build_model(cfg: CrabPlusConfig, rngs: nnx.Rngs) -> CrabPlusThinker:
    return CrabPlusThinker(cfg, rngs=rngs)


def load_tokenizer(path: str):
    """The Qwen2.5-Omni tokenizer from a local folder (never downloads); the original right-pads."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: tokenizer folder not found (an HF Qwen2.5-Omni directory)")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="right")


def random_spec(data: DataConfig, cfg: CrabPlusConfig, batch: int) -> batch_spec.BatchSpec:
    return batch_spec.spec_for(data, cfg, batch)


def random_batches(spec, cfg: CrabPlusConfig, seed: int, *, num_distinct: int = 0, tasks=batch_spec.DEFAULT_TASKS):
    return batch_spec.make_random_batches(spec, cfg, seed, num_distinct=num_distinct, tasks=tasks or batch_spec.DEFAULT_TASKS)


FAMILY = Family(
    name="crab_plus",
    model_config=presets.model_config,
    build_model=build_model,
    forward_loss=forward_loss,
    llm_path="model",
    num_llm_layers=lambda cfg: cfg.text.num_hidden_layers,
    vocab_sizes=lambda cfg: (cfg.text.vocab_size, cfg.text.padded_vocab_size),
    flops=flops.thinker_flops,
    load_tokenizer=load_tokenizer,
    base_vocab_of=tokens.base_vocab_of,
    added_tokens=tokens.ADDED_TOKENS,
    record_texts=_not_built("record text building"),
    batch=BatchFormat(spec=random_spec, shapes=lambda spec, cfg: spec.shapes(cfg), random_batches=random_batches,
                      check=batch_spec.check_batch, prompt_batch=_not_built("held-out prompt cutting")),
    read_records=_not_built("AV-UIE v2 record reading"),
    example_builder=_not_built("the AV-UIE v2 example builder"),
    pad_token_id=lambda cfg: cfg.tokens.pad,
    generate=decoding.jit_generate,
    score_batch=_not_built("held-out scoring"),
    headline={},
    converter=CONVERTER,
)
