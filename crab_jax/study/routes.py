"""The router analysis of one trained model: per-token I-LoRA gates on held-out batches -> a folder
of raw arrays, an index describing them, and the figures.

``DIR/`` after :func:`write_routes`::

    gates.npy                [N, L, P, k] float32  per-token gates (N tokens, L layers, P projections, k heads)
    token_task.npy           [N] int32             index into tasks.npy
    token_modality.npy       [N] int32             index into modalities.npy (0 text, 1 visual, 2 audio)
    token_sample.npy         [N] int32             the token's sample (running over the batches)
    token_position.npy       [N] int32             the token's slot in its sample's sequence
    token_target.npy         [N] bool              the token is part of the answer
    tasks.npy, layers.npy, projections.npy, heads.npy, modalities.npy   names (unicode) of each axis
    task_head.npy ... task_modality_tokens.npy      the summaries (:func:`crab_jax.evaluation.routes.summaries`)
    similarity.npy, similarity_tasks.npy            task x task routing similarity, clustered order
    index.json               every array: file, shape, dtype, axes, meaning
    routes_head_task.png, routes_layers.png, routes_similarity.png   figures (a)-(c)

Every array loads with ``numpy.load`` (no pickle).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from crab_jax.evaluation.route_figures import plot_metadata, route_figures, save_png
from crab_jax.evaluation.routes import Routes, collect_routes, routing_similarity, summaries
from crab_jax.families.base import Family
from crab_jax.io.paths import as_path
from crab_jax.models.media import MODALITY_NAMES

INDEX_JSON = "index.json"

# file stem -> (axes, meaning) of every array written (shapes and dtypes are read off the arrays).
ARRAYS: dict[str, tuple[tuple[str, ...], str]] = {
    "gates": (("token", "layer", "projection", "head"),
              "softmax router gate of each I-LoRA head, per real token (attention mask), LLM layer and projection"),
    "token_task": (("token",), "the token's task, an index into tasks"),
    "token_modality": (("token",), "what the token's slot holds, an index into modalities (0 text, 1 visual, 2 audio)"),
    "token_sample": (("token",), "the token's sample, counted over the batches in order"),
    "token_position": (("token",), "the token's slot in its sample's sequence"),
    "token_target": (("token",), "the token is part of the answer (has a training label)"),
    "tasks": (("task",), "task names (the run's data.tasks)"),
    "layers": (("layer",), "LLM layer names"),
    "projections": (("projection",), "I-LoRA projection names within a layer"),
    "heads": (("head",), "I-LoRA head names"),
    "modalities": (("modality",), "token modality names"),
    "task_head": (("task", "head"), "mean gate over the task's tokens, layers and projections (NaN: no token)"),
    "task_layer_head": (("task", "layer", "head"), "mean gate over the task's tokens and projections, per layer"),
    "task_projection_head": (("task", "projection", "head"), "mean gate over the task's tokens and layers, per projection"),
    "task_site_head": (("task", "layer", "projection", "head"), "mean gate over the task's tokens, per I-LoRA site"),
    "task_modality_head": (("task", "modality", "head"), "mean gate over the task's tokens of one modality, layers and projections"),
    "task_tokens": (("task",), "tokens of each task"),
    "task_modality_tokens": (("task", "modality"), "tokens of each task and modality"),
    "similarity": (("similarity_task", "similarity_task"),
                   "1 - mean over sites of the Jensen-Shannon divergence (base 2) of two tasks' gate distributions; "
                   "tasks with tokens, in clustered order"),
    "similarity_tasks": (("similarity_task",), "task names of the similarity matrix's rows / columns, in order"),
}


def route_arrays(routes: Routes) -> dict[str, np.ndarray]:
    """Every array of :data:`ARRAYS`, from ``routes``."""
    summary = summaries(routes)
    sim, order = routing_similarity(summary["task_site_head"], routes.tasks)
    names = {"tasks": routes.tasks, "layers": routes.layers, "projections": routes.projections,
             "heads": routes.heads, "modalities": MODALITY_NAMES, "similarity_tasks": order}
    out = {"gates": routes.gates.astype(np.float32), "token_task": routes.task, "token_modality": routes.modality,
           "token_sample": routes.sample, "token_position": routes.position, "token_target": routes.target,
           **{k: np.asarray(v, dtype=np.str_).reshape(len(v)) for k, v in names.items()},
           **summary, "similarity": sim}
    missing = set(ARRAYS) ^ set(out)
    if missing:
        raise AssertionError(f"route arrays and their index differ: {sorted(missing)}")
    return out


def write_routes(routes: Routes, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Writes the arrays, ``index.json`` and the figures into ``out_dir`` (made if missing);
    returns the index."""
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = route_arrays(routes)
    index: dict[str, Any] = {"arrays": {}, "figures": {}}
    for name, value in arrays.items():
        axes, meaning = ARRAYS[name]
        with (out / f"{name}.npy").open("wb") as f:
            np.save(f, value, allow_pickle=False)
        index["arrays"][name] = {"file": f"{name}.npy", "shape": list(value.shape), "dtype": str(value.dtype),
                                 "axes": list(axes), "meaning": meaning}
    for file, fig in route_figures(routes).items():
        save_png(fig, os.fspath(out / file))
        index["figures"][file] = plot_metadata(fig)["kind"]
    (out / INDEX_JSON).write_text(json.dumps(index, indent=1) + "\n")
    return index


def run_routes(family: Family, model, model_cfg, batches: Iterable[Mapping[str, Any]], tasks: Sequence[str],
               out_dir: str | os.PathLike, *, max_batches: int | None = None, mesh=None) -> Routes:
    """:func:`collect_routes` over ``batches`` then :func:`write_routes` into ``out_dir``."""
    routes = collect_routes(family, model, model_cfg, batches, tasks, max_batches=max_batches, mesh=mesh)
    write_routes(routes, out_dir)
    return routes
