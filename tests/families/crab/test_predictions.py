"""Crab's predictions hook: the original's decoding ([bos] + ids; AVVP without special tokens),
masks only for segmentation tasks with enough mask tokens (binary logits / AVSS class map),
and the per-task generation budget."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from crab_jax.families.crab import predictions as P
from crab_jax.families.crab.model import MULTICLASS_SEG_TASKS, SEG_TASKS


class StubTokenizer:
    bos_token_id = 1

    def decode(self, ids, skip_special_tokens):
        return ("skip:" if skip_special_tokens else "keep:") + ",".join(map(str, ids))


def test_text_and_masks_as_the_original_writes_them():
    binary_task = next(t for t in SEG_TASKS if t not in MULTICLASS_SEG_TASKS)
    tasks = ["ave", "avvp", binary_task, binary_task, MULTICLASS_SEG_TASKS[0]]
    b, h = len(tasks), 4
    rng = np.random.default_rng(0)
    gen = SimpleNamespace(
        tokens=np.array([[7, 8, 2], [9, 2, 0], [5, 6, 0], [5, 0, 0], [4, 4, 4]]), lengths=np.array([3, 2, 2, 1, 3]),
        finished=np.array([True, True, False, False, False]), mask_count=np.array([6, 0, 6, 5, 7]),
        mask_valid=np.array([True, False, True, False, True]),
        binary_logits=rng.normal(size=(b, 1, h, h)).astype(np.float32),
        avss_logits=rng.normal(size=(b, 3, h, h)).astype(np.float32))
    preds = P.predictions(gen, [SimpleNamespace(task=t) for t in tasks], StubTokenizer())
    assert [p.text for p in preds] == ["keep:1,7,8,2", "skip:1,9,2", "keep:1,5,6", "keep:1,5", "keep:1,4,4,4"]
    assert [p.mask_tokens for p in preds] == [6, 0, 6, 5, 7]
    assert preds[0].mask_logits is None and preds[0].mask_classes is None  # a text task never has a mask
    assert np.array_equal(preds[2].mask_logits, gen.binary_logits[2, 0]) and preds[2].mask_classes is None
    assert preds[3].mask_logits is None  # fewer mask tokens than the seg module needs: no mask
    assert preds[4].mask_logits is None and np.array_equal(preds[4].mask_classes, gen.avss_logits[4].argmax(0))
    assert preds[0].finished and not preds[2].finished and preds[1].generated_ids.tolist() == [9, 2]


def test_default_budgets():
    assert P.default_max_new_tokens("ave") == P.TEXT_MAX_NEW_TOKENS == 500
    assert all(P.default_max_new_tokens(t) == P.SEG_MAX_NEW_TOKENS == 100 for t in SEG_TASKS)
