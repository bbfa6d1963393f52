"""Flat views of NNX state: ``{"a.b.0.weight": array}`` for converters and checkpoints."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.parallel.sharding import Buffer

# What a checkpoint / state dict holds: trainable-or-frozen parameters and torch buffers
# (not RNG counters or caches).
WEIGHTS = (nnx.Param, Buffer)


def path_str(path) -> str:
    return ".".join(str(p) for p in path)


def key_path_str(path) -> str:
    """A ``jax.tree_util`` key path as a dotted name (``DictKey`` / ``SequenceKey`` alike)."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat_leaves(tree) -> dict:
    """``{"a.b.0.c": leaf}`` of a pytree (nested dicts with int or str keys, NNX pure dicts)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {key_path_str(path): leaf for path, leaf in flat}


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
        # set_value (not v[...] =) so a module built with nnx.eval_shape can be filled
        # without a throw-away random init.
        v.set_value(jnp.asarray(arrays[k], dtype=v.dtype))


def materialize_rng_state(module: nnx.Module, seed: int = 0) -> None:
    """Gives concrete values to RNG variables left abstract by ``nnx.eval_shape``.

    Weights are loaded from a checkpoint (:func:`load_flat`); dropout streams only need
    distinct keys, one per stream, derived from ``seed``.
    """
    base = jax.random.key(seed)
    for i, (_, v) in enumerate(nnx.to_flat_state(nnx.state(module, nnx.RngState))):
        if not isinstance(v.get_value(), jax.ShapeDtypeStruct):
            continue
        if isinstance(v, nnx.RngKey):
            # A scanned layer stack holds one key per layer (shape [layers]).
            key = jax.random.fold_in(base, i)
            v.set_value(jax.random.split(key, v.shape) if v.shape else key)
        else:
            v.set_value(jnp.zeros(v.shape, v.dtype))


def abstract_module(ctor) -> nnx.Module:
    """Builds a module without allocating or initialising its weights (fill with :func:`load_flat`)."""
    module = nnx.eval_shape(ctor)
    materialize_rng_state(module)
    return module
