"""Crab's evaluation hooks: prompts cut from training batches, and per-sample scores.

:func:`prompt_batch` turns a batch in the training format (:mod:`crab_jax.families.crab.batch_spec`:
prompt + answer, labels on the answer) into a prompt-only batch of the same shape plus the
reference answer ids. :func:`score_batch` scores each generation against its reference with
the task parsers of :mod:`crab_jax.data.synthetic.metrics`.

Scoring from the reference *text* (the batch's own answer tokens) instead of the record's
JSON fields: every parser reads the same target format the answers are written in
(``<answer> x </answer>``, ``<event> E </event> <range> s,e </range>``, two ``(x,y)`` points,
"... making the sound in the video is X."), so a pseudo-record parsed from the reference
gives the record's fields exactly, and evaluation needs no record files. Segmentation tasks
are scored twice: ``s4`` (mask IoU of the predicted mask with the batch's ``gt_mask``, only
when masks were generated) and ``s4_category`` (the object named in the text).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from crab_jax.data.records.crab import QA_TASKS
from crab_jax.data.synthetic import metrics as SM
from crab_jax.families.crab.decoding import Generation
from crab_jax.models.decoding import DecodeConfig, PromptBatch, decode_texts, exact_match, generated_ids
from crab_jax.models.llama import position_ids_from_mask
from crab_jax.models.losses import IGNORE_INDEX

# Data task -> metric tasks of ``synthetic_metrics`` it is scored with.
METRIC_TASKS = {"avqa": ("avqa",), "ave": ("ave",), "arig": ("arig",), "s4": ("s4", "s4_category"),
                "ms3": ("s4", "s4_category"), "ref-avs": ("s4",), **{t: (t,) for t in QA_TASKS}}
# The metric of each task a run summary reports (the first one found; then exact_match).
HEADLINE = {"avqa": ("avqa",), "ave": ("ave",), "arig": ("arig",), "s4": ("s4_category", "s4"),
            "ms3": ("s4_category", "s4"), "ref-avs": ("s4",), **{t: (t,) for t in QA_TASKS}}
TOKEN_ROW_KEYS = ("input_ids", "attention_mask", "position_ids", "media_index", "labels")


def strip_answers(batch: Mapping[str, Any], pad_id: int) -> PromptBatch:
    """Cuts every row at its first labelled slot (the answer start) and left-pads the prompt.

    Rows with no label (fillers) keep their whole sequence as prompt (``has_answer`` False).
    Shapes are unchanged, so the prompt batch compiles to the training bucket's shape.
    """
    for k in TOKEN_ROW_KEYS:
        if k not in batch:
            raise KeyError(f"strip_answers: batch lacks {k!r} (expected the crab_jax.families.crab.batch_spec format)")
    out = {k: np.asarray(v) for k, v in batch.items()}  # token rows are replaced below, never written to
    labels = out["labels"]
    b, s = labels.shape
    ids = np.full((b, s), pad_id, np.int32)
    media = np.full((b, s), -1, np.int32)
    mask = np.zeros((b, s), np.int32)
    answers, has = [], np.zeros(b, bool)
    for i in range(b):
        real = np.flatnonzero(out["attention_mask"][i])
        labelled = np.flatnonzero(labels[i] != IGNORE_INDEX)
        start = int(real[0]) if len(real) else s
        cut = int(labelled[0]) if len(labelled) else s
        has[i] = len(labelled) > 0
        answers.append(out["input_ids"][i, cut:].astype(np.int32) if has[i] else np.zeros(0, np.int32))
        n = cut - start
        ids[i, s - n:] = out["input_ids"][i, start:cut]
        media[i, s - n:] = out["media_index"][i, start:cut]
        mask[i, s - n:] = 1
    out.update(input_ids=ids, media_index=media, attention_mask=mask,
               position_ids=position_ids_from_mask(mask).astype(np.int32),
               labels=np.full((b, s), IGNORE_INDEX, np.int32))
    return PromptBatch(out, answers, has)


def prompt_batch(batch: Mapping[str, Any], cfg, *, padding: str = "left") -> PromptBatch:
    """The family hook: :func:`strip_answers` with the model's pad id (left padding only: Crab's
    decoding starts every row at the last slot)."""
    if padding != "left":
        raise ValueError(f"Crab generates from left-padded prompts only (padding={padding!r} asked)")
    return strip_answers(batch, cfg.pad_token_id)


def score_sample(task: str, *, text: str, reference_text: str, generated: np.ndarray, reference: np.ndarray,
                 eos_id: int, pred_mask: np.ndarray | None = None, mask_valid: bool = False,
                 gt_mask: np.ndarray | None = None, tokenizer_available: bool = True) -> dict[str, float]:
    """Metric name -> score in [0, 1] for one generation.

    ``exact_match`` compares the ids up to EOS. Text metrics need a tokenizer (else skipped);
    a reference the parser cannot read is skipped (not counted). ``s4``: a sample whose
    generation has fewer than 6 mask tokens has no mask and scores 0 (the original skips such
    samples; here they count, so the number is not inflated by refusing to answer).
    """
    out = {"exact_match": exact_match(generated, reference, eos_id)}
    for metric in METRIC_TASKS.get(task, ()):
        if metric == "s4":
            if gt_mask is None:
                continue
            has_mask = mask_valid and pred_mask is not None
            out["s4"] = SM.score("s4", pred_mask, None, gt_mask=gt_mask) if has_mask else 0.0
            continue
        if tokenizer_available:
            out.update(SM.text_scores((metric,), text, reference_text))
    return out


def score_batch(gen: Generation, prompt: PromptBatch, batch: Mapping[str, Any], tokenizer, tasks: Sequence[str],
                dcfg: DecodeConfig) -> list[dict]:
    """One dict per answered row: ``{task, text, reference, scores: {metric: value}, mask_tokens, finished}``.

    Metrics: ``exact_match`` always; ``avqa`` / ``ave`` / ``arig`` / ``s4_category`` from the text
    (with a tokenizer); ``s4`` mask IoU only when masks were generated (``dcfg.with_masks``: a
    run without a trained seg branch generates none, and a mask IoU of 0 would only mislead).
    """
    # Only what is scored comes to the host (not the mask logits / embeddings).
    gen = jax.device_get(gen._replace(mask_embeddings=None, mask_steps=None, binary_logits=None, avss_logits=None))
    seqs = generated_ids(np.asarray(gen.tokens), np.asarray(gen.lengths))
    texts = decode_texts(tokenizer, seqs)
    refs = decode_texts(tokenizer, prompt.answers)
    task_ids = np.asarray(batch.get("task_id", np.zeros(len(seqs), np.int32)))
    gt = np.asarray(batch["gt_mask"]) if "gt_mask" in batch else None
    is_seg = np.asarray(batch["is_seg"]) if "is_seg" in batch else np.zeros(len(seqs), bool)
    out = []
    for i, seq in enumerate(seqs):
        if not prompt.has_answer[i]:
            continue
        tid = int(task_ids[i])
        if not 0 <= tid < len(tasks):
            raise ValueError(f"evaluate: batch task_id {tid} is outside tasks {tuple(tasks)}")
        task = tasks[tid]
        pred = None if gen.pred_masks is None else np.asarray(gen.pred_masks[i])
        sample = score_sample(task, text=texts[i], reference_text=refs[i], generated=seq,
                              reference=prompt.answers[i], eos_id=dcfg.eos_token_id, pred_mask=pred,
                              mask_valid=bool(gen.mask_valid[i]),
                              gt_mask=gt[i, 0] if (gt is not None and is_seg[i] and dcfg.with_masks) else None,
                              tokenizer_available=tokenizer is not None)
        out.append({"task": task, "text": texts[i], "reference": refs[i], "scores": sample,
                    "mask_tokens": int(gen.mask_count[i]), "finished": bool(gen.finished[i])})
    return out
