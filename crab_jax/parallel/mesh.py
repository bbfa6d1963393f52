"""Device mesh ``(data, fsdp, tensor)`` and the placements the trainer derives from it.

Parameters are placed by their logical axes (``crab_jax.parallel.sharding``) through the config's
rules; batches are split over ``data`` x ``fsdp`` (FSDP shards weights *and* batch).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves one ``-1`` axis to the devices left over; checks the product equals ``num_devices``."""
    for name in sizes:
        if name not in MESH_AXES:
            raise ValueError(f"config mesh.{name}: unknown mesh axis; known: {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1:
        raise ValueError(f"config mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    fixed = math.prod(s for s in shape if s != -1)
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"config mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    if free:
        if num_devices % fixed:
            raise ValueError(f"config mesh: {num_devices} devices are not divisible by the fixed axes "
                             f"{dict(zip(MESH_AXES, shape))}")
        shape[free[0]] = num_devices // fixed
    if math.prod(shape) != num_devices:
        raise ValueError(f"config mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"but {num_devices} are available")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all) with axes :data:`MESH_AXES`."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(dict(sizes), len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # CPU / odd shapes: any order is fine when there is no topology
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def rules_from_config(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Normalises the config's ``mesh.rules`` (lists from JSON/CLI become tuples) and checks mesh axes."""
    out = []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ValueError(f"config mesh.rules[{i}] = {rule!r}: expected (logical_axis, mesh_axes)")
        logical, target = rule
        if isinstance(target, (list, tuple)):
            target = tuple(target)
            names = target
        else:
            names = () if target is None else (target,)
        for n in names:
            if n not in MESH_AXES:
                raise ValueError(f"config mesh.rules[{i}] maps {logical!r} to unknown mesh axis {n!r}; "
                                 f"known: {MESH_AXES}")
        out.append((logical, target))
    return tuple(out)


def batch_partitions(mesh: Mesh) -> int:
    """How many shards the batch axis is split into."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_global_batch(global_batch: int, micro_batches: int, mesh: Mesh) -> int:
    """Returns the per-step micro batch; raises unless it divides evenly over the mesh."""
    if global_batch <= 0 or micro_batches <= 0:
        raise ValueError(f"config train.global_batch={global_batch} and train.micro_batches={micro_batches} "
                         "must be positive")
    if global_batch % micro_batches:
        raise ValueError(f"config train.global_batch={global_batch} is not divisible by "
                         f"train.micro_batches={micro_batches}")
    micro = global_batch // micro_batches
    parts = batch_partitions(mesh)
    if micro % parts:
        raise ValueError(f"config train.global_batch={global_batch} / train.micro_batches={micro_batches} = "
                         f"{micro} samples per micro-batch is not divisible by the mesh's batch shards "
                         f"data x fsdp = {parts} (mesh {dict(mesh.shape)})")
    return micro


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis over ``data x fsdp``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def to_global(batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
    """This process's rows of every key in ``shardings`` -> global arrays split over the mesh
    (``jax.make_array_from_process_local_data``; the leading dim is this process's batch)."""
    missing = [k for k in shardings if k not in batch]
    if missing:
        raise KeyError(f"to_global: the batch lacks {missing} (it has {sorted(batch)})")
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k])) for k in shardings}
