"""Held-out evaluation during training: generate on the test split, score each task vs chance.

The trainer calls :func:`evaluate_state` every ``eval.every_steps`` and at the end. Batches come
from the same pipeline as training (same buckets, so the generator compiles once per bucket),
over the held-out records (synthetic data: test clips asked the training questions,
:func:`crab_jax.data.synthetic.setup.heldout_records`; AV-UIE: the test split as the original
evaluates it), via :func:`crab_jax.data.sources.heldout_split`; AV-UIE rows are scored against
their records by the family's task scorers (the metrics of ``python -m crab_jax.evaluate``). Generation and scoring
are :func:`crab_jax.evaluation.generation.evaluate`. With ``metrics.route_figures`` the same
evaluation draws the I-LoRA routing figures for TensorBoard (:func:`route_images_state`).
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

from crab_jax.config.sections import RunConfig
from crab_jax.data.sources import DataSetup, heldout_split
from crab_jax.evaluation.generation import evaluate
from crab_jax.evaluation.route_figures import figure_rgb, route_figures
from crab_jax.evaluation.routes import collect_routes
from crab_jax.families.base import Family
from crab_jax.io.jsonl import append_line, repair_file
from crab_jax.io.paths import as_path
from crab_jax.models.decoding import DecodeConfig
from crab_jax.models.ilora import router_heads


def evaluate_state(run: RunConfig, family: Family, setup, state, data: DataSetup, *,
                   progress: bool = False) -> dict[str, dict]:
    """Generates with the current weights on the held-out split; ``{"task/metric": {mean, n, chance?}}``."""
    split = heldout_split(run, family, setup.model_cfg, data)
    if split is None:
        return {}
    tok = data.tokenizer
    dcfg = DecodeConfig(max_new_tokens=max_new_tokens(run, family), eos_token_id=int(tok.eos_token_id),
                        pad_token_id=int(family.pad_token_id(setup.model_cfg)),
                        with_masks=bool(run.model.seg_branch))  # masks only from a trained seg branch
    model = setup.merge(state.params, state.frozen, state.rng_vars)
    max_batches = int(run.eval.max_batches) or split.batches.batches_per_epoch
    return evaluate(family, model, setup.model_cfg, split.batches, tok, tuple(run.data.tasks), dcfg=dcfg,
                    with_chance=data.source == "synthetic", max_batches=max_batches, progress=progress,
                    mesh=setup.mesh, records=split.records if split.by_record else None,
                    data_root=str(data.root))


# Held-out batches the trainer's routing figures run (one forward each, gates recorded): few, to keep
# an evaluation's extra cost small.
ROUTE_FIGURE_BATCHES = 2
ROUTE_IMAGE_PREFIX = "routes/"


def route_images_state(run: RunConfig, family: Family, setup, state, data: DataSetup) -> dict[str, np.ndarray]:
    """TensorBoard images ``{"routes/<figure>": [H, W, 3] uint8}`` of the LLM's I-LoRA routing on
    the first :data:`ROUTE_FIGURE_BATCHES` held-out batches (:mod:`crab_jax.evaluation.route_figures`);
    empty (nothing run) with ``metrics.route_figures`` or ``metrics.tensorboard`` off, without a
    held-out split, or without I-LoRA of more than one head."""
    if not (run.metrics.route_figures and run.metrics.tensorboard):
        return {}
    model = setup.merge(state.params, state.frozen, state.rng_vars)
    if router_heads(model) < 2:
        return {}
    split = heldout_split(run, family, setup.model_cfg, data)
    if split is None:
        return {}
    routes = collect_routes(family, model, setup.model_cfg, split.batches, tuple(run.data.tasks),
                            max_batches=ROUTE_FIGURE_BATCHES, mesh=setup.mesh)
    return {ROUTE_IMAGE_PREFIX + file.removeprefix("routes_").removesuffix(".png"): figure_rgb(fig)
            for file, fig in route_figures(routes).items()}


def max_new_tokens(run: RunConfig, family: Family) -> int:
    """``eval.max_new_tokens``, or (0) the largest of the family's per-task budgets over the run's
    tasks (Crab: 500 for text tasks, 100 for segmentation: AV-UIE's reasoning comes before its
    ``<answer>``, a short budget cuts it off)."""
    if int(run.eval.max_new_tokens) > 0:
        return int(run.eval.max_new_tokens)
    if family.default_max_new_tokens is None:
        raise ValueError(f"config eval.max_new_tokens=0: family {family.name!r} has no per-task budget; set it")
    return max(int(family.default_max_new_tokens(t)) for t in run.data.tasks)


def headline(results: Mapping[str, Mapping], table: Mapping[str, tuple[str, ...]]) -> dict[str, dict]:
    """Per task, its main metric: ``{task: {metric, mean, n, chance}}``; ``table`` is the family's
    task -> metric names (the first one present wins; then ``exact_match``; then the task's first
    metric in ``results``' order, which for records scored by the family's task scorers is the
    first row of the task's paper table, as the evaluate command's summary takes it)."""
    out = {}
    tasks = sorted({k.split("/", 1)[0] for k in results})
    for task in tasks:
        in_order = [k.split("/", 1)[1] for k in results if k.split("/", 1)[0] == task and not k.endswith("/unparsable")]
        for metric in tuple(table.get(task, ())) + ("exact_match",) + tuple(in_order):
            entry = results.get(f"{task}/{metric}")
            if entry is not None and entry.get("n", 0) > 0:
                out[task] = {"metric": metric, **entry}
                break
    return out


def format_results(results: Mapping[str, Mapping], table: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Lines ``task  metric  value  (chance c, n=..)`` for the console."""
    lines = []
    for task, e in headline(results, table).items():
        chance = e.get("chance")
        vs = "" if chance is None or math.isnan(chance) else (
            f"  chance {chance:.3f}  ({'above' if e['mean'] > chance else 'NOT above'} chance)")
        lines.append(f"  {task:8s} {e['metric']:12s} {e['mean']:.3f}{vs}  n={e['n']}")
    return lines


EVAL_JSONL = "eval.jsonl"


def append_eval_jsonl(workdir: str | os.PathLike, step: int, results: Mapping[str, Mapping]) -> None:
    """One line per evaluation in ``<workdir>/eval.jsonl``: ``{"step", "results": {task/metric: {...}}}``."""
    append_line(as_path(workdir) / EVAL_JSONL, {"step": int(step), "results": results})


def trim_eval_jsonl(workdir: str | os.PathLike, resumed_step: int) -> None:
    """On resume from ``resumed_step``: drops ``eval.jsonl`` rows of later steps (the crashed run's
    evaluations after its last checkpoint; the resumed run evaluates those steps again)."""
    repair_file(as_path(workdir) / EVAL_JSONL, keep_through_step=int(resumed_step))
