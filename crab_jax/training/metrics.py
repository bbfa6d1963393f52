"""Training metrics: on-device reductions (pure, jit-friendly) and host-side summaries.

On device every quantity is a *sum* plus a *count* so micro-batches and steps add up
exactly; the host divides. Router usage is the mean gate per I-LoRA head over the real
rows (non-padding tokens; an encoder tower's real patches / frames) of the samples of one
task, per contiguous group of a tower's layers, for every tower of
:func:`crab_jax.families.base.all_router_towers`.

MFU (model FLOPs utilisation) = training FLOPs per token (the family's ``flops_per_token``,
e.g. :mod:`crab_jax.families.crab.flops`) x tokens per step / step time / (devices x peak
FLOP/s per device).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

import numpy as np

from crab_jax.models.ilora import layer_of, recorded_gates
from crab_jax.parallel.accelerators import by_device_kind



# Step metrics named ``<prefix><name>`` are per-task sums of a per-sample value (divided by samples).
TASK_SUM_PREFIX = "per_sample/"
# Keys of the step's router usage sums / counts; an encoder tower's add ``/<tower>``.
ROUTER_SUM, ROUTER_COUNT = "router_sum", "router_count"


# -- on device ----------------------------------------------------------------------------------


def per_task_sums(values: jax.Array, task_id: jax.Array, num_tasks: int) -> jax.Array:
    """Per-sample values ``[*lead, ...]`` -> ``[num_tasks, ...]`` sums by ``task_id [*lead]``
    (``[b]``, or ``[b, P]`` for packed rows; -1 = no sample: counted nowhere)."""
    onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32)  # [*lead, T]
    lead = tuple(range(task_id.ndim))
    return jnp.tensordot(onehot, values.astype(jnp.float32), axes=(lead, lead))


def router_keys(tower: str = "") -> tuple[str, str]:
    """The step's ``(sum, count)`` keys of a tower's router usage (``""``: the LLM's)."""
    suffix = f"/{tower}" if tower else ""
    return ROUTER_SUM + suffix, ROUTER_COUNT + suffix


def tower_gates(intermediates, scope: str = "") -> list[tuple[int, jax.Array]]:
    """``(first layer, gates)`` of every I-LoRA call recorded under the module path ``scope``
    (``""``: all): an unscanned layer's ``[rows..., k]`` (first layer from its path), or a scanned
    stack's ``[L, rows..., k]`` (first layer 0)."""
    return [(0 if (layer := layer_of(path)) is None else layer, gates)
            for path, gates in recorded_gates(intermediates, scope)]


def router_usage_sums(gates: Sequence[tuple[int, jax.Array]], row_segment: jax.Array, segment_task: jax.Array, *,
                      num_tasks: int, num_layers: int, groups: int) -> tuple[jax.Array, jax.Array] | None:
    """Sum over samples of each sample's mean gate over its valid rows, ``[num_tasks, groups, k]``,
    and the count ``[num_tasks, groups]`` (samples with a valid row x projections) to divide by.
    None without gates.

    gates: :func:`tower_gates` of one tower; each array holds ``b * n`` rows per layer, read
      row-major as ``[L, b, n, k]`` (``L = 1`` for an unscanned layer).
    row_segment: ``[b, n]`` int, the sample each row belongs to within its batch row (``1 .. P``),
      0 for rows that count nowhere: one sample per row gives the 0/1 valid rows (the LLM:
      ``attention_mask``), a packed row its ``segment_ids``.
    segment_task: ``[b, P]`` the task of each of those samples (-1: none).
    """
    if not gates:
        return None
    b, n = row_segment.shape
    owner = jax.nn.one_hot(row_segment - 1, segment_task.shape[1], dtype=jnp.float32)  # [b, n, P]
    real = owner.sum(1)                        # [b, P]
    denom = jnp.maximum(real, 1.0)
    # A sample without a real row of the tower (no audio, an all-padding row) counts nowhere.
    onehot = jax.nn.one_hot(segment_task, num_tasks, dtype=jnp.float32) * (real > 0)[..., None]  # [b, P, T]
    total, count = None, None
    for first, g in gates:
        k = g.shape[-1]
        if g.size % (b * n * k):
            raise ValueError(f"router gates {g.shape} do not hold b x n = {b} x {n} rows per layer "
                             f"(the tower's rows are {row_segment.shape})")
        stacked = g.reshape(g.size // (b * n * k), b, n, k)  # [L, b, n, k]
        per_sample = jnp.einsum("lbnk,bnp->lbpk", stacked, owner) / denom[None, :, :, None]
        group_of = (first + np.arange(stacked.shape[0])) * groups // num_layers
        group_onehot = jax.nn.one_hot(group_of, groups, dtype=jnp.float32)  # [L, G]
        sums = jnp.einsum("lbpk,bpt,lg->tgk", per_sample, onehot, group_onehot)
        counts = jnp.einsum("bpt,lg->tg", onehot, group_onehot)
        total = sums if total is None else total + sums
        count = counts if count is None else count + counts
    return total, count


# -- host side ------------------------------------------------------------------------------------


def summarize(sums: Mapping[str, np.ndarray], tasks: Sequence[str]) -> dict[str, float]:
    """Turns the step's sums into named scalars: every scalar (``loss`` and the family's loss
    terms, ``grad_norm``, ``lr``), ``task/<t>/lm_loss`` (per token), ``task/<t>/<name>`` (per
    sample, for the family's per-sample values) and the mean router gate of each I-LoRA head
    over the real rows of task ``t``'s samples, per group ``g`` of contiguous layers:
    ``router/<t>/group<g>/head<h>`` for the LLM (tokens) and
    ``router/<t>/<tower>/group<g>/head<h>`` for an encoder tower (``vision``: patches of the
    used frame slots, ``audio``: conv frames of the used chunks; the family's ``router_towers``),
    so TensorBoard lists each task's towers side by side."""
    out = {k: float(v) for k, v in sums.items() if np.ndim(v) == 0}
    nll, tok = np.asarray(sums["task_nll"]), np.asarray(sums["task_tokens"])
    n = np.asarray(sums["task_samples"])
    per_sample = {k[len(TASK_SUM_PREFIX):]: np.asarray(v) for k, v in sums.items() if k.startswith(TASK_SUM_PREFIX)}
    for t, name in enumerate(tasks):
        if n[t] > 0:
            out[f"task/{name}/lm_loss"] = float(nll[t] / max(tok[t], 1.0))
            for key, values in per_sample.items():
                out[f"task/{name}/{key}"] = float(values[t] / n[t])
            out[f"task/{name}/samples"] = float(n[t])
    towers = [k[len(ROUTER_SUM) + 1:] if k != ROUTER_SUM else "" for k in sums
              if k == ROUTER_SUM or k.startswith(ROUTER_SUM + "/")]
    for tower in towers:
        sum_key, count_key = router_keys(tower)
        rs, rc = np.asarray(sums[sum_key]), np.asarray(sums[count_key])
        where = f"{tower}/" if tower else ""
        for t, name in enumerate(tasks):
            for g in range(rs.shape[1]):
                if rc[t, g] > 0:
                    for h in range(rs.shape[2]):
                        out[f"router/{name}/{where}group{g}/head{h}"] = float(rs[t, g, h] / rc[t, g])
    return out


def peak_flops_per_device(configured: float = 0.0) -> float:
    """Configured value, else the accelerator table's row for the device kind; 0 when unknown (no MFU)."""
    if configured > 0:
        return float(configured)
    acc = by_device_kind(jax.devices()[0].device_kind)
    return 0.0 if acc is None else acc.peak_flops


def mfu(flops_per_token: float, tokens: float, seconds: float, num_devices: int, peak: float) -> float | None:
    if peak <= 0 or seconds <= 0:
        return None
    return flops_per_token * tokens / seconds / (num_devices * peak)
