"""Crab's evaluation hooks (crab_jax.families.crab.evaluation): prompt cutting and per-sample scores."""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.families.crab import evaluation as I
from crab_jax.models.losses import IGNORE_INDEX


def test_strip_answers_left_pads_the_prompt_and_keeps_the_answer():
    ids = np.array([[2, 2, 1, 7, 8, 9, 10, 2], [1, 5, 6, 9, 9, 9, 11, 2]], np.int32)
    labels = np.array([[-100, -100, -100, -100, -100, 9, 10, 2], [-100] * 8], np.int32)
    mask = (np.arange(8)[None] >= np.array([[2], [0]])).astype(np.int32)
    media = np.full((2, 8), -1, np.int32)
    media[0, 3] = 0
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "media_index": media,
             "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0)}
    out = I.strip_answers(batch, pad_id=2)
    np.testing.assert_array_equal(out.batch["input_ids"][0], [2, 2, 2, 2, 2, 1, 7, 8])
    np.testing.assert_array_equal(out.batch["media_index"][0], [-1] * 6 + [0, -1])
    np.testing.assert_array_equal(out.batch["attention_mask"][0], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(out.batch["position_ids"][0], [0, 0, 0, 0, 0, 0, 1, 2])
    np.testing.assert_array_equal(out.answers[0], [9, 10, 2])
    # A row without labels (a filler) keeps its whole sequence and is not scored.
    np.testing.assert_array_equal(out.batch["input_ids"][1], ids[1])
    np.testing.assert_array_equal(out.has_answer, [True, False])
    assert (out.batch["labels"] == IGNORE_INDEX).all()


def test_score_sample_parses_the_reference_answer():
    def one(task, text, ref, **kw):
        return I.score_sample(task, text=text, reference_text=ref, generated=np.array([1, 2]),
                              reference=np.array([1, 2]), eos_id=2, **kw)

    assert one("avqa", "So the answer is <answer> two </answer>.</s>",
               "So the answer is <answer> Two </answer>.</s>") == {"exact_match": 1.0, "avqa": 1.0}
    ave_ref = "is <event> dog </event>, and the time range is <range> 2,8 </range>.</s>"
    assert one("ave", "is <event> dog </event>, and the time range is <range> 2,6 </range>.", ave_ref)["ave"] == 0.8
    gt = np.zeros((4, 4), np.int32)
    gt[:2] = 1
    s4 = one("s4", "The object making the sound in the video is cat. The mask ... is <mask_start>",
             "The object making the sound in the video is cat. The mask ... is <mask_start>",
             pred_mask=gt, mask_valid=True, gt_mask=gt)
    assert s4["s4"] == pytest.approx(1.0) and s4["s4_category"] == 1.0
    no_mask = one("s4", "", "The object making the sound in the video is cat.", pred_mask=gt, mask_valid=False,
                  gt_mask=gt)
    assert no_mask["s4"] == 0.0 and no_mask["s4_category"] == 0.0
    # Without a tokenizer only the id-level metric exists.
    assert I.score_sample("avqa", text="", reference_text="", generated=np.array([3, 2]), reference=np.array([4, 2]),
                          eos_id=2, tokenizer_available=False) == {"exact_match": 0.0}
