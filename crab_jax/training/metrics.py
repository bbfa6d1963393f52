"""Training metrics: on-device reductions (pure, jit-friendly) and host-side summaries.

On device every quantity is a *sum* plus a *count* so micro-batches and steps add up
exactly; the host divides. Router usage is the mean gate per I-LoRA head over the real
(non-padding) tokens of the samples of one task, per contiguous group of decoder layers.

MFU (model FLOPs utilisation) = training FLOPs per token (the family's ``flops_per_token``,
e.g. :mod:`crab_jax.families.crab.flops`) x tokens per step / step time / (devices x peak
FLOP/s per device).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

import numpy as np
from flax import nnx

from crab_jax.models.ilora import GATES_INTERMEDIATE
from crab_jax.parallel.accelerators import by_device_kind



# Step metrics named ``<prefix><name>`` are per-task sums of a per-sample value (divided by samples).
TASK_SUM_PREFIX = "per_sample/"


# -- on device ----------------------------------------------------------------------------------


def per_task_sums(values: jax.Array, task_id: jax.Array, num_tasks: int) -> jax.Array:
    """``[b, ...]`` per-sample values -> ``[num_tasks, ...]`` sums."""
    onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32)  # [b, T]
    return jnp.tensordot(onehot, values.astype(jnp.float32), axes=(0, 0))


def _layer_of(path) -> int | None:
    for i, p in enumerate(path[:-1]):
        if str(p) == "layers" and isinstance(path[i + 1], int):
            return int(path[i + 1])
    return None


def router_usage_sums(intermediates, attention_mask: jax.Array, task_id: jax.Array, *, num_tasks: int,
                      num_layers: int, groups: int, scope: str = "") -> tuple[jax.Array, jax.Array] | None:
    """Sum over samples of each sample's mean gate, ``[num_tasks, groups, k]``, and the count
    ``[num_tasks, groups]`` (samples x projections) to divide by. None without gates.

    ``scope``: only gates under this module path (the family's ``llm_path``) count."""
    mask = attention_mask.astype(jnp.float32)  # [b, S]
    denom = jnp.maximum(mask.sum(1), 1.0)      # [b]
    onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32)  # [b, T]
    total, count = None, None
    for path, var in nnx.to_flat_state(intermediates):
        if str(path[-1]) != GATES_INTERMEDIATE or (scope and str(path[0]) != scope):
            continue
        for gates in var.get_value():
            layer = _layer_of(path)
            if gates.ndim == 4:   # scanned: [L, b, S, k]
                per_sample = jnp.einsum("lbsk,bs->lbk", gates, mask) / denom[None, :, None]
                group_of = jnp.arange(gates.shape[0]) * groups // num_layers
                group_onehot = jax.nn.one_hot(group_of, groups, dtype=jnp.float32)  # [L, G]
                sums = jnp.einsum("lbk,bt,lg->tgk", per_sample, onehot, group_onehot)
                counts = jnp.einsum("bt,lg->tg", onehot, group_onehot)
            else:                 # [b, S, k] of layer `layer`
                per_sample = jnp.einsum("bsk,bs->bk", gates, mask) / denom[:, None]
                g = 0 if layer is None else layer * groups // num_layers
                sel = jax.nn.one_hot(g, groups, dtype=jnp.float32)
                sums = jnp.einsum("bk,bt,g->tgk", per_sample, onehot, sel)
                counts = jnp.einsum("bt,g->tg", onehot, sel)
            total = sums if total is None else total + sums
            count = counts if count is None else count + counts
    return None if total is None else (total, count)


# -- host side ------------------------------------------------------------------------------------


def summarize(sums: Mapping[str, np.ndarray], tasks: Sequence[str]) -> dict[str, float]:
    """Turns the step's sums into named scalars: every scalar (``loss`` and the family's loss
    terms, ``grad_norm``, ``lr``), ``task/<t>/lm_loss`` (per token), ``task/<t>/<name>`` (per
    sample, for the family's per-sample values) and ``router/<t>/group<g>/head<h>``."""
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
    if "router_sum" in sums:
        rs, rc = np.asarray(sums["router_sum"]), np.asarray(sums["router_count"])
        for t, name in enumerate(tasks):
            for g in range(rs.shape[1]):
                if rc[t, g] > 0:
                    for h in range(rs.shape[2]):
                        out[f"router/{name}/group{g}/head{h}"] = float(rs[t, g, h] / rc[t, g])
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
