"""Generate with a trained Crab and score the answers: ``python -m crab_jax.infer --config ... --workdir ...``.

Three layers, pure at the centre:

* :mod:`crab_jax.families.crab.decoding` — the jitted decoder (:func:`~crab_jax.families.crab.decoding.jit_generate`).
* host helpers here — :func:`strip_answers` turns a batch in the training format
  (:mod:`crab_jax.families.crab.batch_spec`: prompt + answer, labels on the answer) into a prompt-only
  batch of the same shape plus the reference answer ids; :func:`decode_texts` detokenises;
  :func:`score_sample` scores one generation against its reference with the task parsers of
  :mod:`crab_jax.data.synthetic.metrics`.
* :func:`evaluate` — the loop the trainer calls on held-out batches; ``main`` — the CLI.

Scoring from the reference *text* (the batch's own answer tokens) instead of the record's
JSON fields: every parser of ``synthetic_metrics`` reads the same target format the
answers are written in (``<answer> x </answer>``, ``<event> E </event> <range> s,e </range>``,
two ``(x,y)`` points, "... making the sound in the video is X."), so a pseudo-record parsed
from the reference gives the record's fields exactly, and evaluation needs no record files.
Segmentation tasks are scored twice: ``s4`` (mask IoU of the predicted mask with the batch's
``gt_mask``) and ``s4_category`` (the object named in the text).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import pathlib
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from crab_jax.data.synthetic import metrics as SM
from crab_jax.data.text.sequence import IGNORE_INDEX, position_ids_from_mask
from crab_jax.families.crab.decoding import DecodeConfig, Generation, jit_generate

log = logging.getLogger("crab_jax.evaluation.generation")

# Data task -> metric tasks of ``synthetic_metrics`` it is scored with.
METRIC_TASKS = {"avqa": ("avqa",), "ave": ("ave",), "arig": ("arig",), "s4": ("s4", "s4_category"),
                "ms3": ("s4", "s4_category"), "ref-avs": ("s4",)}
TOKEN_ROW_KEYS = ("input_ids", "attention_mask", "position_ids", "media_index", "labels")


# ----------------------------------------------------------------------------- batches


@dataclasses.dataclass
class PromptBatch:
    """A prompt-only batch and what was cut off.

    Attributes:
      batch: same keys and shapes as the input; answer slots removed, each row left-padded
        again (``labels`` all -100).
      answers: per row, the reference answer ids (``[n_i]`` int32, EOS included), empty for
        rows without labels (fillers).
      has_answer: ``[b]`` bool.
    """

    batch: dict[str, np.ndarray]
    answers: list[np.ndarray]
    has_answer: np.ndarray


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


def generated_ids(gen_tokens: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Per row, the generated ids up to and including EOS."""
    return [np.asarray(gen_tokens[i, : int(lengths[i])]) for i in range(len(lengths))]


def decode_texts(tokenizer, sequences: Sequence[np.ndarray]) -> list[str]:
    """Ids -> text as the original decodes (``skip_special_tokens=False``; parsers strip markers).

    Without a tokenizer the ids are written space-separated (``"<id:17> <id:5>"``), which no
    task parser matches: only the generic metrics score then.
    """
    if tokenizer is None:
        return [" ".join(f"<id:{int(t)}>" for t in seq) for seq in sequences]
    return [tokenizer.decode([int(t) for t in seq], skip_special_tokens=False) for seq in sequences]


# ----------------------------------------------------------------------------- scoring


def reference_record(task: str, reference_text: str) -> dict | None:
    """The record fields a metric task needs, parsed from the reference answer (None: unparsable)."""
    if task == "avqa":
        answer = SM.parse_answer(reference_text)
        return None if answer is None else {"answer": answer}
    if task == "ave":
        event, span = SM.parse_event(reference_text)
        if event is None or span is None:
            return None
        return {"event": event, "start_time": span[0], "end_time": span[1]}
    if task == "arig":
        box = SM.parse_box(reference_text)
        return None if box is None else {"top_left": list(box[:2]), "bottom_right": list(box[2:])}
    if task == "s4_category":
        obj = SM.parse_s4_object(reference_text)
        return None if obj is None else {"a_obj": obj}
    raise ValueError(f"reference_record: no text reference for metric task {task!r}")


def _strip_eos(ids: np.ndarray, eos_id: int) -> np.ndarray:
    hits = np.flatnonzero(ids == eos_id)
    return ids[: hits[0]] if len(hits) else ids


def score_sample(task: str, *, text: str, reference_text: str, generated: np.ndarray, reference: np.ndarray,
                 eos_id: int, pred_mask: np.ndarray | None = None, mask_valid: bool = False,
                 gt_mask: np.ndarray | None = None, tokenizer_available: bool = True) -> dict[str, float]:
    """Metric name -> score in [0, 1] for one generation.

    ``exact_match`` compares the ids up to EOS. Text metrics need a tokenizer (else skipped);
    a reference the parser cannot read is skipped (not counted). ``s4``: a sample whose
    generation has fewer than 6 mask tokens has no mask and scores 0 (the original skips such
    samples; here they count, so the number is not inflated by refusing to answer).
    """
    out = {"exact_match": float(np.array_equal(_strip_eos(generated, eos_id), _strip_eos(reference, eos_id)))}
    for metric in METRIC_TASKS.get(task, ()):
        if metric == "s4":
            if gt_mask is None:
                continue
            has_mask = mask_valid and pred_mask is not None
            out["s4"] = SM.score("s4", pred_mask, None, gt_mask=gt_mask) if has_mask else 0.0
            continue
        if not tokenizer_available:
            continue
        record = reference_record(metric, reference_text)
        if record is not None:
            out[metric] = SM.score(metric, text, record)
    return out


def summarise(scores: Mapping[str, Sequence[float]], *, with_chance: bool) -> dict[str, dict]:
    """``{metric key: {mean, n, chance?}}`` from per-sample lists (keys ``task/metric``)."""
    out = {}
    for key, values in sorted(scores.items()):
        arr = np.asarray(values, np.float64)
        entry = {"mean": float(arr.mean()) if arr.size else math.nan, "n": int(arr.size)}
        metric = key.split("/", 1)[1]
        if with_chance and metric in SM.TASKS:
            entry["chance"] = SM.chance_level(metric)
        out[key] = entry
    return out


def flat_metrics(results: Mapping[str, Mapping[str, float]], prefix: str = "eval/") -> dict[str, float]:
    """``{"eval/avqa/avqa": mean, "eval/avqa/avqa_chance": chance, ...}`` for a metric writer."""
    flat = {}
    for key, entry in results.items():
        flat[f"{prefix}{key}"] = entry["mean"]
        if "chance" in entry:
            flat[f"{prefix}{key}_chance"] = entry["chance"]
    return flat


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, batches: Iterable[Mapping[str, Any]], tokenizer, tasks: Sequence[str], *,
             dcfg: DecodeConfig, rng_seed: int = 0, with_chance: bool = True, max_batches: int | None = None,
             progress: bool = False, records_out: list | None = None) -> dict[str, dict]:
    """Generates for held-out batches and scores each task.

    Args:
      model: a :class:`~crab_jax.families.crab.model.Crab` (switched to eval mode, router sowing off).
      batches: batches in the training format (labels mark the answer); ``task_id`` indexes ``tasks``.
      tokenizer: HF tokenizer (``crab_jax.families.crab.prompts.load_tokenizer``) or None (ids only:
        ``exact_match`` alone is scored).
      tasks: the run's ``data.tasks``.
      dcfg: decoding settings (``eos_token_id`` / ``pad_token_id`` from the tokenizer / model).
      with_chance: add each metric's chance level (synthetic dataset's, ``synthetic_metrics``).
      records_out: if a list, one dict per sample is appended (task, text, reference, scores).
    Returns:
      ``{"<task>/<metric>": {"mean", "n"[, "chance"]}}`` with metric in ``exact_match``,
      ``avqa``, ``ave``, ``arig``, ``s4`` (mask IoU), ``s4_category``.
    """
    import jax

    scores: dict[str, list[float]] = collections.defaultdict(list)
    it = iter(batches)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_batches, desc="generate", unit="batch", dynamic_ncols=True)
    rng = jax.random.key(rng_seed)
    done = 0
    try:
        while max_batches is None or done < max_batches:
            try:
                batch = next(it)
            except StopIteration:
                break
            rng, key = jax.random.split(rng)
            prompt = strip_answers(batch, model.cfg.pad_token_id)
            gen: Generation = jit_generate(model, prompt.batch, dcfg, key)
            _score_batch(gen, prompt, batch, tokenizer, tasks, dcfg, scores, records_out)
            done += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return summarise(scores, with_chance=with_chance)


def _score_batch(gen: Generation, prompt: PromptBatch, batch, tokenizer, tasks, dcfg, scores, records_out) -> None:
    import jax

    # Only what is scored comes to the host (not the mask logits / embeddings).
    gen = jax.device_get(gen._replace(mask_embeddings=None, mask_steps=None, binary_logits=None, avss_logits=None))
    seqs = generated_ids(np.asarray(gen.tokens), np.asarray(gen.lengths))
    texts = decode_texts(tokenizer, seqs)
    refs = decode_texts(tokenizer, prompt.answers)
    task_ids = np.asarray(batch.get("task_id", np.zeros(len(seqs), np.int32)))
    gt = np.asarray(batch["gt_mask"]) if "gt_mask" in batch else None
    is_seg = np.asarray(batch["is_seg"]) if "is_seg" in batch else np.zeros(len(seqs), bool)
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
                              gt_mask=gt[i, 0] if (gt is not None and is_seg[i]) else None,
                              tokenizer_available=tokenizer is not None)
        for metric, value in sample.items():
            scores[f"{task}/{metric}"].append(value)
        if records_out is not None:
            records_out.append({"task": task, "text": texts[i], "reference": refs[i], "scores": sample,
                                "mask_tokens": int(gen.mask_count[i]), "finished": bool(gen.finished[i])})
