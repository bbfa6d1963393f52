"""Crab+'s held-out scoring hook: generated ids vs the batch's own answers (exact match up to
``<|im_end|>``) and the text metrics of the synthetic tasks, decoded as the original decodes."""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.families.crab_plus import chat
from crab_jax.families.crab_plus.decoding import Generation
from crab_jax.families.crab_plus.evaluation import score_batch
from crab_jax.models.decoding import DecodeConfig, PromptBatch
from tests.families.crab_plus.thinker_helpers import MODEL_DIR


@pytest.fixture(scope="module")
def tok(crab_plus_fixtures_dir):
    return chat.load_tokenizer(crab_plus_fixtures_dir / MODEL_DIR)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_exact_match_and_answer_accuracy(tok):
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    answer = _ids(tok, "So the answer is <answer>two</answer>.") + [eos]
    other = _ids(tok, "Maybe <answer>two</answer>") + [eos]
    wrong = _ids(tok, "So the answer is <answer>three</answer>.") + [eos]
    rows = [answer, other, wrong, []]
    width = max(map(len, rows)) + 2
    tokens = np.full((4, width), pad, np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    gen = Generation(tokens, np.asarray([len(r) for r in rows], np.int32), np.asarray([True] * 3 + [False]), None)
    prompt = PromptBatch({}, [np.asarray(answer, np.int32)] * 3 + [np.zeros(0, np.int32)],
                         np.asarray([True, True, True, False]))
    batch = {"task_id": np.asarray([0, 0, 0, 0], np.int32)}
    out = score_batch(gen, prompt, batch, tok, ("avqa",), DecodeConfig(max_new_tokens=width, eos_token_id=eos,
                                                                        pad_token_id=pad))
    assert len(out) == 3  # the filler row (no answer) is not scored
    assert [o["scores"]["exact_match"] for o in out] == [1.0, 0.0, 0.0]
    assert [o["scores"]["avqa"] for o in out] == [1.0, 1.0, 0.0]
    assert out[0]["text"] == "So the answer is <answer>two</answer>."  # special tokens dropped, stripped
    with pytest.raises(ValueError, match="task_id"):
        score_batch(gen, prompt, {"task_id": np.asarray([5, 0, 0, 0], np.int32)}, tok, ("avqa",),
                    DecodeConfig(max_new_tokens=width, eos_token_id=eos, pad_token_id=pad))
