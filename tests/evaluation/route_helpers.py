"""Synthetic router gates for the figure and study tests (no model)."""

from __future__ import annotations

import numpy as np

from crab_jax.evaluation.routes import Routes

L, P, K = 3, 2, 4


def make_routes(tasks, task_of_token, rng, *, logits_by_task=None):
    """Random per-token gates; ``logits_by_task[t]`` ([L, P, K]) biases task t's routers."""
    n = len(task_of_token)
    logits = rng.normal(size=(n, L, P, K))
    if logits_by_task is not None:
        logits = logits * 0.1 + np.stack([logits_by_task[t] for t in task_of_token])
    gates = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    task = np.asarray(task_of_token, np.int32)
    return Routes(gates.astype(np.float32), task, rng.integers(0, 3, n).astype(np.int32), np.arange(n, dtype=np.int32),
                  np.arange(n, dtype=np.int32), np.zeros(n, bool), tuple(tasks), tuple(f"layer{i}" for i in range(L)),
                  tuple(f"mlp.p{i}" for i in range(P)))
