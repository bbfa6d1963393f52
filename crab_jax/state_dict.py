"""Flat views of NNX state: ``{"a.b.0.weight": array}`` for converters and checkpoints."""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.sharding import Buffer

# What a checkpoint / state dict holds: trainable-or-frozen parameters and torch buffers
# (not RNG counters or caches).
WEIGHTS = (nnx.Param, Buffer)


def path_str(path) -> str:
    return ".".join(str(p) for p in path)


def flat_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    """Every variable of ``module`` (params and buffers) by dotted path."""
    state = nnx.state(module, WEIGHTS)
    return {path_str(p): v for p, v in nnx.to_flat_state(state)}


def expected_shapes(module: nnx.Module) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in flat_variables(module).items()}


def flat_arrays(module: nnx.Module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v[...]) for k, v in flat_variables(module).items()}


def load_flat(module: nnx.Module, arrays: Mapping[str, np.ndarray], *, source: str = "arrays") -> None:
    """Assigns ``arrays`` into ``module``'s variables (keeping each variable's dtype).

    Every variable must be present with its exact shape; an extra array is an error.
    """
    variables = flat_variables(module)
    problems = []
    for k in sorted(set(variables) - set(arrays)):
        problems.append(f"missing {k!r} (expected shape {tuple(variables[k].shape)})")
    for k in sorted(set(arrays) - set(variables)):
        problems.append(f"unexpected {k!r}")
    for k in sorted(set(arrays) & set(variables)):
        if tuple(arrays[k].shape) != tuple(variables[k].shape):
            problems.append(f"{k!r}: expected shape {tuple(variables[k].shape)}, found {tuple(arrays[k].shape)}")
    if problems:
        raise ValueError(f"{source}: cannot load into {type(module).__name__}:\n  " + "\n  ".join(problems))
    for k, v in variables.items():
        v[...] = jnp.asarray(arrays[k], dtype=v.dtype)
