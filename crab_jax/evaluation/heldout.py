"""Held-out evaluation during training: generate on the test split, score each task vs chance.

The trainer calls :func:`evaluate_state` every ``eval.every_steps`` and at the end. Batches come
from the same Grain pipeline as training (same buckets, so the generator compiles once per
bucket), over the held-out records of :func:`crab_jax.data.synthetic.setup.heldout_records`
(synthetic data: test clips asked the training questions) or the test split as the original
evaluates it (AV-UIE). Generation and scoring are :func:`crab_jax.evaluation.generation.evaluate`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Mapping

import jax

from crab_jax.io.paths import as_path
from crab_jax.data.sources import DataSetup, heldout_iterator
from crab_jax.data.synthetic.setup import heldout_records
from crab_jax.io.jsonl import append_line

log = logging.getLogger("crab_jax.train")

# The metric of each task the run summary reports (the first one found).
HEADLINE = {"avqa": ("avqa",), "ave": ("ave",), "arig": ("arig",), "s4": ("s4_category", "s4"),
            "ms3": ("s4_category", "s4"), "ref-avs": ("s4",)}


def evaluate_state(setup, state, config, data: DataSetup, *, progress: bool = False) -> dict[str, dict]:
    """Generates with the current weights on the held-out split; ``{"task/metric": {mean, n, chance?}}``."""
    from crab_jax.evaluation import generation as infer
    from crab_jax.families.crab.decoding import DecodeConfig

    batches = heldout_iterator(config, setup.crab_cfg, data)
    if batches is None:
        return {}
    tok = data.tokenizer
    dcfg = DecodeConfig(max_new_tokens=int(config.eval.max_new_tokens), eos_token_id=int(tok.eos_token_id),
                        pad_token_id=int(setup.crab_cfg.pad_token_id),
                        with_masks=bool(config.model.seg_branch))  # masks only from a trained seg branch
    model = setup.merge(state.params, state.frozen, state.rng_vars)
    max_batches = int(config.eval.max_batches) or batches.batches_per_epoch
    results = infer.evaluate(model, batches, tok, tuple(config.data.tasks), dcfg=dcfg,
                             with_chance=data.source == "synthetic", max_batches=max_batches, progress=progress)
    if not config.model.seg_branch:  # no mask was generated: a mask IoU of 0 would only mislead
        results = {k: v for k, v in results.items() if not k.endswith("/s4")}
    return results


def headline(results: Mapping[str, Mapping]) -> dict[str, dict]:
    """Per task, its main metric: ``{task: {metric, mean, n, chance}}``."""
    out = {}
    tasks = sorted({k.split("/", 1)[0] for k in results})
    for task in tasks:
        for metric in HEADLINE.get(task, ()) + ("exact_match",):
            entry = results.get(f"{task}/{metric}")
            if entry is not None and entry.get("n", 0) > 0:
                out[task] = {"metric": metric, **entry}
                break
    return out


def format_results(results: Mapping[str, Mapping]) -> list[str]:
    """Lines ``task  metric  value  (chance c, n=..)`` for the console."""
    lines = []
    for task, e in headline(results).items():
        chance = e.get("chance")
        vs = "" if chance is None or math.isnan(chance) else (
            f"  chance {chance:.3f}  ({'above' if e['mean'] > chance else 'NOT above'} chance)")
        lines.append(f"  {task:8s} {e['metric']:12s} {e['mean']:.3f}{vs}  n={e['n']}")
    return lines


def append_eval_jsonl(workdir: str | os.PathLike, step: int, results: Mapping[str, Mapping]) -> None:
    """One line per evaluation in ``<workdir>/eval.jsonl``: ``{"step", "results": {task/metric: {...}}}``."""
    append_line(as_path(workdir) / "eval.jsonl", {"step": int(step), "results": results})
