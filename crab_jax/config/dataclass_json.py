"""Frozen config dataclasses <-> JSON: the one pair of helpers every family's config file uses.

Dtypes are written by name and tuples as lists; :func:`dataclass_kwargs` restores both, so a
config read back equals the one written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

DTYPE_FIELDS = ("dtype", "param_dtype")


def to_plain(value: Any) -> Any:
    """A JSON-ready copy: dataclasses -> dicts, tuples -> lists, dtypes -> names."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, (np.dtype, type)):  # np.dtype, jnp.float32, np.float32
        return jnp.dtype(value).name
    if isinstance(value, np.generic):
        return value.item()
    return value


def dataclass_kwargs(cls, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``d`` as constructor arguments of ``cls``: lists -> tuples, dtype names -> dtypes.

    Raises ValueError naming ``where`` (the file / section) on a non-object or an unknown field.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    out = {}
    for k, v in d.items():
        if k in DTYPE_FIELDS and v is not None:
            v = jnp.dtype(v)
        elif isinstance(v, list):
            v = tuple(v)
        out[k] = v
    return out
