"""Held-out generation + scoring (crab_jax.evaluation.generation) with the Crab family on a tiny Crab."""

from __future__ import annotations

import numpy as np

from crab_jax import families
from crab_jax.data.text.sequence import expand_placeholders, left_pad_batch
from crab_jax.evaluation import generation as I
from crab_jax.models.losses import IGNORE_INDEX
from tests.families.crab.generation_helpers import (DCFG, EOS, SEQ, base_model, cfg,  # noqa: F401 (fixtures)
                                                    chain_model, prompt_batch)


class _CharTokenizer:
    """Ids 3.. are characters; 2 is ``</s>``."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("</s>" if i == 2 else chr(i + 94) for i in ids)


def test_evaluate_scores_a_memorised_answer(cfg, base_model):
    # The chain model answers 61 62 63 </s> after token 60; the reference answer of sample 0
    # is exactly that, sample 1's is not.
    model = chain_model(base_model, [60, 61, 62, 63, EOS])
    prompts = prompt_batch(cfg, last_tokens=[60, 60], text_lens=[3, 5], seed=4)
    answers = [[61, 62, 63, EOS], [61, 62, 9, EOS]]
    rows = []
    for i, ans in enumerate(answers):
        real = prompts["input_ids"][i][prompts["attention_mask"][i] == 1]
        rows.append(expand_placeholders(np.concatenate([real, ans]), [IGNORE_INDEX] * len(real) + ans, {}))
    batch = left_pad_batch(rows, SEQ, cfg.pad_token_id)
    batch.pop("pad_left")
    media = np.full_like(batch["input_ids"], -1)
    for i in range(2):
        src = prompts["media_index"][i][prompts["attention_mask"][i] == 1]
        start = int(np.flatnonzero(batch["attention_mask"][i])[0])
        media[i, start:start + len(src)] = src
    batch.update(media_index=media, frames=prompts["frames"], fbank=prompts["fbank"],
                 task_id=np.array([0, 0], np.int32), is_avss=np.zeros(2, bool))
    samples = []
    results = I.evaluate(families.get("crab"), model, cfg, [batch], _CharTokenizer(), ("ave",), dcfg=DCFG, with_chance=False,
                         records_out=samples)
    assert results["ave/exact_match"] == {"mean": 0.5, "n": 2}
    assert [s["finished"] for s in samples] == [True, True]
    assert I.flat_metrics(results) == {"eval/ave/exact_match": 0.5}
