"""Crab+'s held-out scoring hook: generated answers against the batch's own target texts.

The trainer's held-out pass (:mod:`crab_jax.evaluation.generation`) cuts each training-format
batch to its prompts (:func:`crab_jax.families.crab_plus.collate.prompt_batch`), generates and
calls :func:`score_batch`. Every row is scored by ``exact_match`` (ids up to ``<|im_end|>``)
and by the text metrics of :mod:`crab_jax.data.synthetic.metrics` its task has (the parsers read
the target formats: ``<answer>x</answer>``, ``<event> E </event> <range> s,e </range>``,
``<obj>(x1,y1)(x2,y2)</obj>`` / ``[x1,y1,x2,y2]``, "... making the sound in the video is X.").
The paper tables come from the prediction files instead (``python -m crab_jax.evaluate``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from crab_jax.data.synthetic import metrics as SM
from crab_jax.families.crab_plus.predictions import decode_prediction
from crab_jax.models.decoding import DecodeConfig, PromptBatch, exact_match, generated_ids

# Data task -> text metrics of ``crab_jax.data.synthetic.metrics`` it is scored with.
TEXT_METRICS = {"avqa": ("avqa",), "ave": ("ave",), "arig": ("arig",), "s4": ("s4_category",),
                "ms3": ("s4_category",)}
# The metric of each task a run summary reports (the first one found; then exact_match).
HEADLINE = dict(TEXT_METRICS)


def score_batch(gen, prompt: PromptBatch, batch: Mapping[str, Any], tokenizer, tasks: Sequence[str],
                dcfg: DecodeConfig) -> list[dict]:
    """One dict per answered row: ``{task, text, reference, scores: {metric: value}, finished}``."""
    gen = jax.device_get(gen)
    seqs = generated_ids(np.asarray(gen.tokens), np.asarray(gen.lengths))
    task_ids = np.asarray(batch.get("task_id", np.zeros(len(seqs), np.int32)))
    out = []
    for i, seq in enumerate(seqs):
        if not prompt.has_answer[i]:
            continue
        tid = int(task_ids[i])
        if not 0 <= tid < len(tasks):
            raise ValueError(f"evaluate: batch task_id {tid} is outside tasks {tuple(tasks)}")
        task = tasks[tid]
        reference = prompt.answers[i]
        scores = {"exact_match": exact_match(seq, reference, dcfg.eos_token_id)}
        text = ref = None
        if tokenizer is not None:
            text, ref = decode_prediction(tokenizer, seq), decode_prediction(tokenizer, reference)
            scores.update(SM.text_scores(TEXT_METRICS.get(task, ()), text, ref))
        out.append({"task": task, "text": text, "reference": ref, "scores": scores,
                    "finished": bool(gen.finished[i])})
    return out
