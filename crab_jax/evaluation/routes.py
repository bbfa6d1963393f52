"""Where the I-LoRA routers send each token: per-token gates of every LLM I-LoRA layer on held-out
batches, per task, layer, projection and token modality, and their summaries.

:func:`collect_routes` runs the family's training forward (``family.forward_loss``, teacher
forcing: prompt and answer tokens) jit-compiled once per batch shape, in eval mode (dropout
off) with gate recording on, and keeps the gates of the real tokens (``attention_mask``) of
the real rows (a pipeline's filler rows are dropped)::

    gates      [N, L, P, k] float32   N tokens, L LLM layers, P I-LoRA projections, k heads
    task       [N] int32              index into ``tasks`` (the batch's ``task_id``)
    modality   [N] int32              0 text, 1 visual, 2 audio (``family.token_modality``)
    sample     [N] int32              running index of the token's sample over the batches
    position   [N] int32              the token's slot in its sample's sequence
    target     [N] bool               the token is part of the answer (``labels`` set)

Only the LLM's routers (``family.llm_path``): their rows are tokens. An encoder tower's
routers (Crab+'s vision / audio) see patches and frames; the trainer logs their mean usage.

Summaries (:func:`summaries`) are token-weighted means (every token counts once; the trainer's
``router/<task>/group<g>/head<h>`` averages per sample), NaN where a task has no token.
:func:`routing_similarity` compares the tasks' routing distributions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from crab_jax.families.base import Family
from crab_jax.models.ilora import DEFAULT_TARGETS, LAYER_LISTS, ILoRALinear, layer_of, recorded_gates
from crab_jax.models.losses import IGNORE_INDEX
from crab_jax.models.media import MODALITY_NAMES, TEXT
from crab_jax.parallel.multihost import gather_rows, shard_rows

# Module attributes ``model.eval()`` / ``model.train()`` set (dropout, batch norm), restored after use.
_MODE_ATTRIBUTES = ("deterministic", "use_running_average")


@dataclasses.dataclass(frozen=True)
class Routes:
    """Per-token router gates and what each token is (see the module docstring for the arrays)."""

    gates: np.ndarray
    task: np.ndarray
    modality: np.ndarray
    sample: np.ndarray
    position: np.ndarray
    target: np.ndarray
    tasks: tuple[str, ...]
    layers: tuple[str, ...]
    projections: tuple[str, ...]

    @property
    def num_heads(self) -> int:
        return int(self.gates.shape[-1])

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(f"head{h}" for h in range(self.num_heads))


# ----------------------------------------------------------------------------- the model's view


@contextlib.contextmanager
def recording_view(model: nnx.Module):
    """``model`` in eval mode with gate recording on; on exit its own mode attributes (dropout
    on / off) and record flags are put back."""
    saved = []
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            attrs = {a: getattr(node, a) for a in _MODE_ATTRIBUTES if a in vars(node)}
            if isinstance(node, ILoRALinear):
                attrs["record_gates"] = node.record_gates
            if attrs:
                saved.append((node, attrs))
    try:
        model.eval()
        for node, attrs in saved:
            if "record_gates" in attrs:
                node.record_gates = True
        yield model
    finally:
        for node, attrs in saved:
            for a, v in attrs.items():
                setattr(node, a, v)


@functools.partial(nnx.jit, static_argnames=("forward", "scope"))
def _forward_gates(model, batch, *, forward, scope: str) -> dict[str, jax.Array]:
    """``{module path: gates}`` of one forward (``forward(model, batch, with_seg=False)``)."""
    _, inter = nnx.capture(lambda m: forward(m, batch, False), nnx.Intermediate)(model)
    out = {}
    for path, gates in recorded_gates(inter, scope):
        key = "/".join(map(str, path))
        if key in out:
            raise ValueError(f"I-LoRA layer {key} was called more than once in one forward")
        out[key] = gates
    return out


def _site(path: Sequence[str]) -> tuple[int | None, str]:
    """``(layer or None for a scanned stack, projection name)`` of a gate path
    (``llm/model/layers/0/self_attn/q_proj`` -> ``(0, "self_attn.q_proj")``)."""
    parts: list[Any] = [int(p) if p.isdigit() else p for p in path]
    for i, p in enumerate(parts):
        if p in LAYER_LISTS:
            rest = parts[i + 1:]
            if rest and isinstance(rest[0], int):
                rest = rest[1:]
            return layer_of(parts), ".".join(map(str, rest))
    return 0, ".".join(map(str, parts))


def _gate_grid(gates: Mapping[str, np.ndarray], b: int, s: int) -> tuple[np.ndarray, tuple[str, ...], tuple[int, ...]]:
    """Gates of one batch as ``[L, P, b, S, k]`` (layers in order, projections in the decoder's
    order), the projection names and the layer indices."""
    cells: dict[tuple[int, str], np.ndarray] = {}
    projections: list[str] = []
    for key, g in gates.items():
        first, name = _site(key.split("/"))
        g = np.asarray(g, np.float32)
        k = g.shape[-1]
        if g.size % (b * s * k):
            raise ValueError(f"router gates of {key} {g.shape} do not hold b x S = {b} x {s} tokens per layer")
        stacked = g.reshape(-1, b, s, k)
        if name not in projections:
            projections.append(name)
        for j in range(stacked.shape[0]):
            cells[((0 if first is None else first) + j, name)] = stacked[j]
    layers = tuple(sorted({layer for layer, _ in cells}))
    # The decoder's order (q, k, v, o, gate, up, down), not the state's alphabetical one.
    rank = {name: i for i, name in enumerate(DEFAULT_TARGETS)}
    projections.sort(key=lambda p: (rank.get(p.rsplit(".", 1)[-1], len(rank)), p))
    missing = [(layer, p) for layer in layers for p in projections if (layer, p) not in cells]
    if missing:
        raise ValueError(f"I-LoRA projections differ between layers: no gates for (layer, projection) {missing[:3]}")
    grid = np.stack([np.stack([cells[(layer, p)] for p in projections]) for layer in layers])
    return grid, tuple(projections), layers


# ----------------------------------------------------------------------------- collection


def collect_routes(family: Family, model, model_cfg, batches: Iterable[Mapping[str, Any]], tasks: Sequence[str], *,
                   max_batches: int | None = None, mesh=None) -> Routes:
    """Per-token gates of the LLM's I-LoRA layers over ``batches`` (training-format batches
    whose ``task_id`` indexes ``tasks``; at most ``max_batches``). ``mesh``: the model's mesh,
    needed with several processes (each process's rows are gathered into the global batch,
    every process returns the same routes). Raises when the model has no I-LoRA layer."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("gates", "task", "modality", "sample", "position", "target")}
    names: tuple[tuple[str, ...], tuple[int, ...]] | None = None
    samples = 0
    it = iter(batches)
    with recording_view(model) as view:
        done = 0
        while max_batches is None or done < max_batches:
            try:
                batch = next(it)
            except StopIteration:
                break
            report = getattr(batches, "last_report", None)
            batch = gather_rows(dict(batch))
            if jax.process_count() > 1 and mesh is None:
                raise ValueError("collect_routes: several processes need the model's mesh (mesh=...)")
            inputs = shard_rows(batch, mesh) if jax.process_count() > 1 else batch
            gates = gather_rows(_forward_gates(view, inputs, forward=family.forward_loss,
                                               scope=family.llm_path))
            if not gates:
                raise ValueError(f"family {family.name!r}: the model has no I-LoRA layer under "
                                 f"{family.llm_path or 'its root'!r} (model.lora), no router to analyse")
            b, s = np.shape(batch["attention_mask"])
            grid, projections, layers = _gate_grid(gates, b, s)
            if names is None:
                names = (projections, layers)
            elif names != (projections, layers):
                raise ValueError(f"batch {done}: I-LoRA layers {names} changed to {(projections, layers)}")
            keep = np.asarray(batch["attention_mask"]) > 0                                 # [b, S]
            if report is not None and "records" in report:  # a pipeline's filler rows (-1) are not data
                keep &= (gather_rows(np.asarray(report["records"], np.int64)) >= 0)[:, None]
            rows, cols = np.nonzero(keep)
            parts["gates"].append(grid[:, :, rows, cols].transpose(2, 0, 1, 3))           # [n, L, P, k]
            parts["task"].append(np.asarray(batch["task_id"], np.int32)[rows])
            modality = (np.full((b, s), TEXT, np.int32) if family.token_modality is None
                        else np.asarray(family.token_modality(batch, model_cfg), np.int32))
            parts["modality"].append(modality[rows, cols])
            parts["sample"].append((samples + rows).astype(np.int32))
            parts["position"].append(cols.astype(np.int32))
            labels = batch.get("labels")
            parts["target"].append(np.zeros(len(rows), bool) if labels is None
                                   else np.asarray(labels)[rows, cols] != IGNORE_INDEX)
            samples += b
            done += 1
    if names is None:
        raise ValueError("collect_routes: no batch to run (empty held-out split?)")
    projections, layers = names
    return Routes(**{k: np.concatenate(v) for k, v in parts.items()}, tasks=tuple(tasks),
                  layers=tuple(f"layer{i}" for i in layers), projections=projections)


# ----------------------------------------------------------------------------- summaries


def grouped_mean(values: np.ndarray, groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``values [N, ...]`` averaged per ``groups [N]`` (ints in ``[0, num_groups)``): means
    ``[num_groups, ...]`` (NaN for an empty group) and counts ``[num_groups]``."""
    values = np.asarray(values, np.float64)
    sums = np.zeros((num_groups,) + values.shape[1:])
    np.add.at(sums, np.asarray(groups, np.int64), values)
    counts = np.bincount(np.asarray(groups, np.int64), minlength=num_groups)[:num_groups]
    shape = (num_groups,) + (1,) * (values.ndim - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts.reshape(shape) > 0, sums / np.maximum(counts, 1).reshape(shape), np.nan)
    return means, counts


def summaries(routes: Routes) -> dict[str, np.ndarray]:
    """Mean gate per task and head, overall and per layer / projection / modality (NaN: no token):

    task_head [T, k], task_layer_head [T, L, k], task_projection_head [T, P, k],
    task_site_head [T, L, P, k] (every I-LoRA site), task_modality_head [T, 3, k];
    task_tokens [T] and task_modality_tokens [T, 3] token counts.
    """
    t, m = len(routes.tasks), len(MODALITY_NAMES)
    site, tokens = grouped_mean(routes.gates, routes.task, t)                         # [T, L, P, k]
    by_modality, modality_tokens = grouped_mean(routes.gates.mean(axis=(1, 2)), routes.task * m + routes.modality, t * m)
    with np.errstate(invalid="ignore"):
        return {
            "task_head": site.mean(axis=(1, 2)),
            "task_layer_head": site.mean(axis=2),
            "task_projection_head": site.mean(axis=1),
            "task_site_head": site,
            "task_modality_head": by_modality.reshape(t, m, -1),
            "task_tokens": tokens,
            "task_modality_tokens": modality_tokens.reshape(t, m),
        }


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of distributions over the last axis."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    mid = (p + q) / 2

    def kl(a):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / mid), 0.0).sum(-1)

    return np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)


def routing_similarity(site_head: np.ndarray, tasks: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Task x task similarity of routing: 1 - the mean over I-LoRA sites (layer x projection) of the
    Jensen-Shannon divergence of two tasks' mean gate distributions there (1: the same routing).

    site_head: ``[T, ..., k]`` mean gates per task and site (:func:`summaries`' ``task_site_head``).
    Returns ``(similarity [T', T'], task names)`` over the T' tasks that have tokens, rows ordered
    by average-linkage hierarchical clustering of ``1 - similarity`` (similar tasks adjacent);
    symmetric, ones on the diagonal.
    """
    site_head = np.asarray(site_head, np.float64)
    present = [i for i in range(site_head.shape[0]) if np.all(np.isfinite(site_head[i]))]
    sites = int(np.prod(site_head.shape[1:-1]))
    dists = site_head[present].reshape(len(present), sites, site_head.shape[-1])      # [T', sites, k]
    sim = 1.0 - js_divergence(dists[:, None], dists[None, :]).mean(-1) if present else np.zeros((0, 0))
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    order = list(range(len(present)))
    if len(present) > 2:
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform

        order = list(leaves_list(linkage(squareform(np.clip(1.0 - sim, 0.0, None), checks=False), "average")))
    return sim[np.ix_(order, order)], tuple(tasks[present[i]] for i in order)
