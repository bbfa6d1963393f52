"""Crab+'s generated answers as ``inference_omni.py`` decodes them (spec B.6), for prediction files.

The original generates up to 512 new tokens, keeps only the new ones (``output[:, L:]``) and
writes ``batch_decode(skip_special_tokens=True, clean_up_tokenization_spaces=False)`` stripped.
Rows past EOS hold the pad id (a special token, dropped by the decode like the original's pads).
Crab+ has no in-model mask: S4 / MS3 / Ref-AVS masks come from the SAM2 stage
(``python -m crab_jax.segment``) reading the box / points in the text.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crab_jax.families.base import SamplePrediction

MAX_NEW_TOKENS = 512  # inference_omni.py's generate(max_new_tokens=512), every task


def default_max_new_tokens(task: str) -> int:
    """The original's generation budget: the same for every task."""
    return MAX_NEW_TOKENS


def decode_prediction(tokenizer, generated_ids: Sequence[int]) -> str:
    """The new tokens as the original writes its ``predict`` field."""
    return tokenizer.decode([int(t) for t in generated_ids], skip_special_tokens=True,
                            clean_up_tokenization_spaces=False).strip()


def predictions(generation, records: Sequence, tokenizer) -> list[SamplePrediction]:
    """One :class:`SamplePrediction` per record (rows ``0 .. len(records) - 1`` of ``generation``,
    a :class:`~crab_jax.families.crab_plus.decoding.Generation`; later rows are batch padding)."""
    tokens, lengths = np.asarray(generation.tokens), np.asarray(generation.lengths)
    finished = np.asarray(generation.finished)
    out = []
    for i in range(len(records)):
        ids = tokens[i, : int(lengths[i])].astype(np.int32)
        out.append(SamplePrediction(text=decode_prediction(tokenizer, ids), generated_ids=ids,
                                    finished=bool(finished[i]), mask_tokens=0))
    return out
