"""Figures of the router analysis (:mod:`crab_jax.evaluation.routes`), headless (matplotlib's Agg
canvas, no pyplot state):

(a) :func:`head_task_figure`: mean gate per task (rows) x head (columns), the papers' figure;
(b) :func:`layer_figure`: the same per LLM layer, one panel each;
(c) :func:`similarity_figure`: task x task routing similarity, rows / columns clustered;
(d) :func:`figure_rgb`: a figure as an ``[H, W, 3]`` uint8 array (TensorBoard's ``add_image``).

Each figure carries what it plots (:data:`PLOT_METADATA_KEY`: JSON with the matrix's shape, row
and column labels and values) so a saved PNG can be checked or re-plotted without the arrays
(:func:`save_png` writes it as a PNG text chunk, PIL reads it back as ``Image.open(p).text``).
A task without tokens is a grey row (NaN); it has no place in the similarity matrix.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crab_jax.evaluation.routes import Routes, routing_similarity, summaries

PLOT_METADATA_KEY = "crab_jax_plot"
HEAD_TASK_PNG, LAYERS_PNG, SIMILARITY_PNG = "routes_head_task.png", "routes_layers.png", "routes_similarity.png"
_CMAP = "viridis"
_DPI = 100


def _metadata(fig: Figure, kind: str, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], **extra) -> None:
    fig._crab_jax_plot = {"kind": kind, "shape": list(np.shape(matrix)), "rows": list(rows), "cols": list(cols),
                          "values": np.where(np.isfinite(matrix), matrix, None).tolist(), **extra}


def plot_metadata(fig: Figure) -> dict:
    """What ``fig`` plots (see the module docstring)."""
    return fig._crab_jax_plot


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(max(width, 2.5), max(height, 2.0)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _heat(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, vmin: float, vmax: float,
          annotate: bool, digits: int = 2):
    """One heat map on ``ax``; NaN cells grey; values written in the cells when ``annotate``."""
    masked = np.ma.masked_invalid(np.asarray(matrix, np.float64))
    image = ax.imshow(masked, cmap=colormaps[_CMAP].with_extremes(bad="lightgrey"), vmin=vmin, vmax=vmax,
                      aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=45 if len(cols) > 4 else 0, ha="right"
                  if len(cols) > 4 else "center", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    if annotate:
        for (i, j), v in np.ndenumerate(np.asarray(matrix)):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=7,
                        color="white" if v < (vmin + vmax) / 2 else "black")
    return image


def _gate_range(matrix: np.ndarray) -> tuple[float, float]:
    """Colour range of gates: their [min, max] (routing differences are often a few percent around
    1/k; the cells' numbers give the absolute values), [0, 1] without a finite value."""
    finite = np.asarray(matrix)[np.isfinite(matrix)]
    if not finite.size:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 0.01, high + 0.01)


def head_task_figure(task_head: np.ndarray, tasks: Sequence[str], heads: Sequence[str], *,
                     title: str = "mean router gate per task and head") -> Figure:
    """(a) ``task_head [T, k]``: one row per task, one column per head."""
    matrix = np.asarray(task_head, np.float64).reshape(len(tasks), len(heads))
    fig = _new_figure(1.2 + 0.7 * len(heads), 1.2 + 0.4 * len(tasks))
    ax = fig.add_subplot()
    vmin, vmax = _gate_range(matrix)
    image = _heat(ax, matrix, tasks, heads, vmin=vmin, vmax=vmax, annotate=matrix.size <= 400)
    ax.set_xlabel("I-LoRA head")
    ax.set_ylabel("task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    _metadata(fig, "head_task", matrix, tasks, heads)
    return fig


def layer_figure(task_layer_head: np.ndarray, tasks: Sequence[str], layers: Sequence[str],
                 heads: Sequence[str]) -> Figure:
    """(b) ``task_layer_head [T, L, k]``: one panel per layer (tasks x heads), one colour scale."""
    matrix = np.asarray(task_layer_head, np.float64).reshape(len(tasks), len(layers), len(heads))
    n = max(len(layers), 1)
    cols = min(n, 4)
    grid_rows = math.ceil(n / cols)
    fig = _new_figure(cols * (1.0 + 0.5 * len(heads)) + 1.0, grid_rows * (0.8 + 0.3 * len(tasks)) + 0.6)
    vmin, vmax = _gate_range(matrix)
    axes = fig.subplots(grid_rows, cols, squeeze=False)
    image = None
    for index, ax in enumerate(axes.flat):
        if index >= len(layers):
            ax.set_axis_off()
            continue
        image = _heat(ax, matrix[:, index], tasks, heads, vmin=vmin, vmax=vmax, annotate=False)
        ax.set_title(layers[index], fontsize=8)
        if index % cols:
            ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle("mean router gate per task and head, by layer", fontsize=9)
    _metadata(fig, "layers", matrix, tasks, heads, panels=list(layers))
    return fig


def similarity_figure(similarity: np.ndarray, tasks: Sequence[str]) -> Figure:
    """(c) task x task routing similarity (already ordered, :func:`routing_similarity`)."""
    matrix = np.asarray(similarity, np.float64).reshape(len(tasks), len(tasks))
    fig = _new_figure(2.4 + 0.5 * len(tasks), 1.4 + 0.5 * len(tasks))
    ax = fig.add_subplot()
    if len(tasks):
        # Colours span the off-diagonal values (similarities are often all close to 1).
        off = matrix[~np.eye(len(tasks), dtype=bool) & np.isfinite(matrix)]
        low = float(off.min()) if off.size else 0.99
        low = low if low < 1.0 else 0.99
        image = _heat(ax, matrix, tasks, tasks, vmin=low, vmax=1.0, annotate=len(tasks) <= 20, digits=3)
        fig.colorbar(image, ax=ax, shrink=0.8)
    else:
        ax.text(0.5, 0.5, "no task has tokens", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("routing similarity\n(1 - mean JS divergence, clustered)", fontsize=9)
    _metadata(fig, "similarity", matrix, tasks, tasks)
    return fig


def route_figures(routes: Routes, summary: Mapping[str, np.ndarray] | None = None) -> dict[str, Figure]:
    """The three figures of ``routes``, keyed by their PNG file names."""
    summary = summaries(routes) if summary is None else summary
    sim, order = routing_similarity(summary["task_site_head"], routes.tasks)
    return {
        HEAD_TASK_PNG: head_task_figure(summary["task_head"], routes.tasks, routes.heads),
        LAYERS_PNG: layer_figure(summary["task_layer_head"], routes.tasks, routes.layers, routes.heads),
        SIMILARITY_PNG: similarity_figure(sim, order),
    }


def save_png(fig: Figure, path: str | os.PathLike) -> None:
    """``fig`` as a PNG with its plot metadata in a text chunk (:data:`PLOT_METADATA_KEY`)."""
    fig.savefig(os.fspath(path), format="png", dpi=_DPI,
                metadata={PLOT_METADATA_KEY: json.dumps(plot_metadata(fig))})


def figure_rgb(fig: Figure) -> np.ndarray:
    """(d) ``fig`` rendered as ``[H, W, 3]`` uint8 (TensorBoard ``add_image(..., dataformats="HWC")``)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]
