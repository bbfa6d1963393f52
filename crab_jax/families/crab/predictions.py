"""Crab's generated samples as the original's inference scripts write them (the family's
``predictions`` and ``default_max_new_tokens`` hooks of the quick start).

* Text: ``tokenizer.batch_decode(sequences, skip_special_tokens=False)`` where ``sequences``
  is ``[bos] + generated ids``: Hugging Face's greedy search from ``inputs_embeds`` alone
  (transformers 4.37) seeds its output with the BOS id, so every original prediction starts
  with ``<s>``. AVVP is decoded with ``skip_special_tokens=True``, as
  ``inference_hyper_lora.py:inference_avvp`` writes it (the file its evaluation parses;
  the fixture README section 6 step 4).
* Masks: only for a segmentation task that generated at least six ``<mask_k>`` tokens
  (``Generation.mask_valid``); otherwise none, as the original's scripts print
  "pred_masks is None" and skip the sample. Binary tasks (S4, MS3, Ref-AVS) give the logits
  ``[H, W]``; AVSS gives the class map ``argmax`` over classes (the original's
  ``save_color_mask``: softmax then argmax, the same ids).
* Budget: 500 new tokens for text tasks, 100 for segmentation (spec A.6.0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crab_jax.families.base import SamplePrediction
from crab_jax.families.crab.model import MULTICLASS_SEG_TASKS, SEG_TASKS

TEXT_MAX_NEW_TOKENS = 500
SEG_MAX_NEW_TOKENS = 100
# Tasks whose predictions the original writes without special tokens.
SKIP_SPECIAL_TOKEN_TASKS = ("avvp",)


def default_max_new_tokens(task: str) -> int:
    """The original's ``max_new_tokens`` of ``task`` (spec A.6.0)."""
    return SEG_MAX_NEW_TOKENS if task in SEG_TASKS else TEXT_MAX_NEW_TOKENS


def decode_prediction(tokenizer, generated_ids: Sequence[int], task: str) -> str:
    """``[bos] + generated_ids`` decoded as the original writes ``task``'s predictions."""
    seed = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    return tokenizer.decode(seed + [int(t) for t in generated_ids],
                            skip_special_tokens=task in SKIP_SPECIAL_TOKEN_TASKS)


def _host(x):
    return None if x is None else np.asarray(x)


def predictions(generation, records: Sequence, tokenizer) -> list[SamplePrediction]:
    """One :class:`SamplePrediction` per record (rows ``0 .. len(records) - 1`` of ``generation``,
    a :class:`~crab_jax.families.crab.decoding.Generation`; later rows are batch padding)."""
    tokens, lengths = np.asarray(generation.tokens), np.asarray(generation.lengths)
    finished, count = np.asarray(generation.finished), np.asarray(generation.mask_count)
    valid = np.asarray(generation.mask_valid)
    binary, avss = _host(generation.binary_logits), _host(generation.avss_logits)
    out = []
    for i, record in enumerate(records):
        ids = tokens[i, : int(lengths[i])].astype(np.int32)
        has_mask = record.task in SEG_TASKS and bool(valid[i])
        multiclass = record.task in MULTICLASS_SEG_TASKS
        logits = binary[i, 0].astype(np.float32) if has_mask and not multiclass and binary is not None else None
        classes = (np.argmax(avss[i], axis=0).astype(np.int32)
                   if has_mask and multiclass and avss is not None else None)
        out.append(SamplePrediction(text=decode_prediction(tokenizer, ids, record.task), generated_ids=ids,
                                    finished=bool(finished[i]), mask_tokens=int(count[i]),
                                    mask_logits=logits, mask_classes=classes))
    return out
