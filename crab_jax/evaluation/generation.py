"""Held-out generation and scoring, for any family: batches -> generated answers -> per-task means.

:func:`evaluate` is the loop the trainer (:mod:`crab_jax.evaluation.heldout`) and
``python -m crab_jax.infer`` call: per batch the family cuts the prompts
(``family.batch.prompt_batch``), generates (``family.generate``, jit-compiled once per
bucket) and scores each sample (``family.score_batch``); :func:`summarise` averages per
``task/metric`` next to the metric's chance level where the synthetic dataset defines one.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from crab_jax.data.synthetic import metrics as SM
from crab_jax.evaluation.record_scoring import RecordScorer
from crab_jax.families.base import Family
from crab_jax.models.decoding import DecodeConfig
from crab_jax.parallel.multihost import gather_rows, shard_rows


# ----------------------------------------------------------------------------- results


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


def evaluate(family: Family, model, model_cfg, batches: Iterable[Mapping[str, Any]], tokenizer, tasks: Sequence[str], *,
             dcfg: DecodeConfig, rng_seed: int = 0, with_chance: bool = True, max_batches: int | None = None,
             progress: bool = False, records_out: list | None = None, mesh: Mesh | None = None,
             records: Sequence[Any] | None = None, data_root: str | None = None) -> dict[str, dict]:
    """Generates for held-out batches and scores each task (the family's prompt, generate and score hooks).

    Args:
      family: the model family (:class:`crab_jax.families.base.Family`).
      model: the family's model (put in eval mode, router sowing off, by its generator).
      model_cfg: the model's config.
      batches: batches in the training format (labels mark the answer); ``task_id`` indexes ``tasks``.
      tokenizer: the family's tokenizer (``family.load_tokenizer``) or None (ids only: ``exact_match``
        alone is scored).
      tasks: the run's ``data.tasks``.
      dcfg: decoding settings (``eos_token_id`` / ``pad_token_id`` from the tokenizer / model).
      with_chance: add each metric's chance level (synthetic dataset's, ``synthetic_metrics``).
      records_out: if a list, one dict per sample is appended (task, text, reference, scores).
      mesh: the model's mesh; needed with several processes. Each process's batches hold its
        rows of the global batch: they are gathered, generated for as one global batch split
        over the mesh, and scored whole on every process, so every process returns the same
        results (equal to a one-process run's on the same global batches); writing them is the
        caller's business (process 0).
      records, data_root: the records the batches were built from (``batches`` must then be the
        pipeline's iterator: its ``last_report["records"]`` maps rows to records) and their
        root: rows are scored against the records by the family's task scorers
        (:mod:`crab_jax.evaluation.record_scoring`, the metrics of ``python -m crab_jax.evaluate``)
        instead of against the answer text.
    Returns:
      ``{"<task>/<metric>": {"mean", "n"[, "chance"]}}`` (the metrics the family's scorer gives,
      e.g. Crab's ``exact_match``, ``avqa``, ``ave``, ``arig``, ``s4`` mask IoU, ``s4_category``).
    """
    scores: dict[str, list[float]] = collections.defaultdict(list)
    by_record = None if records is None else RecordScorer(family, records, data_root or "", tokenizer)
    it = iter(batches)
    bar = None
    if progress:
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
            batch = gather_rows(dict(batch))  # the global batch (this process's rows alone, if single)
            prompt = family.batch.prompt_batch(batch, model_cfg)
            inputs = prompt.batch
            if jax.process_count() > 1:
                if mesh is None:
                    raise ValueError("evaluate: several processes need the model's mesh (mesh=...)")
                inputs = shard_rows(inputs, mesh)
            gen = family.generate(model, inputs, dcfg, key)
            if jax.process_count() > 1:
                gen = gather_rows(gen)
            if by_record is not None:  # rows -> records: the pipeline's report of this batch
                samples = by_record.add(gen, gather_rows(np.asarray(batches.last_report["records"], np.int64)))
            else:
                samples = family.score_batch(gen, prompt, batch, tokenizer, tasks, dcfg)
                for sample in samples:
                    for metric, value in sample["scores"].items():
                        scores[f"{sample['task']}/{metric}"].append(value)
            if records_out is not None:
                records_out.extend(samples)
            done += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if by_record is not None:
        return by_record.results()
    return summarise(scores, with_chance=with_chance)


