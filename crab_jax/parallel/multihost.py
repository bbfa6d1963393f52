"""Agreement and gathering across JAX processes (hosts); no-ops with one process.

Every collective program (a train step, a generation) must be entered by all processes with
the same shapes, so decisions that change what runs next are made *together*:

* :func:`any_process` — a host flag (SIGTERM seen, a stop requested) that is True on any
  process becomes True on all of them, so every process saves the same step and leaves;
* :func:`gather_rows` — each process's rows of a batch (numpy, leading dim) -> the global
  batch on every process, in process order (the order :func:`crab_jax.parallel.mesh.to_global`
  lays them out), so host-side scoring sees every sample, identically everywhere;
* :func:`shard_rows` — a batch every process holds whole (the same values) -> global arrays
  split over the mesh's batch axes, each process placing only its own devices' rows.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from crab_jax.parallel.mesh import batch_partitions, batch_sharding, replicated


def any_process(flag: bool) -> bool:
    """``flag`` OR-ed over all processes (a blocking host collective when there are several)."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32))
    return bool(np.asarray(flags).any())


def gather_rows(tree: Any) -> Any:
    """A pytree of per-process numpy / jax arrays ``[local_b, ...]`` -> ``[global_b, ...]`` numpy
    on every process (rows of process 0 first). Global jax arrays (already spanning the
    processes) are fetched whole. One process: the tree as numpy."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def shard_rows(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays of a batch that is identical on every process: rows over ``data x fsdp``
    (replicated when the batch does not divide over them). Row ``i`` stays row ``i``."""
    parts = batch_partitions(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        sharding = (batch_sharding(mesh, value.ndim) if value.ndim and value.shape[0] % parts == 0
                    else replicated(mesh))
        out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
    return out
