"""Logical-axis sharding metadata: the one place that talks to Flax's sharding API.

Every parameter in crab_jax is created through :func:`param`, which attaches a tuple of
*logical* axis names (``embed``, ``mlp``, ``heads``, ``lora_rank`` ...). The mesh and the
rules that map logical names to mesh axes come from the config (MaxText style), so a
Flax API rename is a one-line fix here and nowhere else.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axis names used by the models. Kept in one tuple so configs can be validated.
LOGICAL_AXES = (
    "embed",        # model width of the LLM / encoders
    "mlp",          # feed-forward hidden width
    "heads",        # attention query heads * head_dim (flattened projection output)
    "kv",           # key/value heads * head_dim
    "vocab",        # vocabulary rows of embeddings / LM head
    "layers",       # stacked (scanned) layer axis
    "lora_rank",    # LoRA rank r
    "lora_heads",   # number of I-LoRA B heads (k)
    "conv",         # convolution kernel spatial axes
    "channels",     # convolution channels
    "queries",      # learned query tokens
    "norm",         # norm scales / biases
    "positions",    # learned position tables
    None,
)

# Flax 0.12 names this metadata ``out_sharding`` (it was ``sharding`` / ``sharding_names``).
_SHARDING_METADATA_KEY = "out_sharding"

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def param(
    init: Initializer,
    key: jax.Array,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype: jnp.dtype = jnp.float32,
) -> nnx.Param:
    """Creates an ``nnx.Param`` of ``shape`` annotated with logical ``axes``.

    The value is created unsharded; placement happens when the state is put on a mesh
    (``jit(..., out_shardings=...)``) so modules can be built without a mesh context.
    """
    shape = tuple(int(s) for s in shape)
    axes = tuple(axes)
    if len(axes) != len(shape):
        raise ValueError(f"param of shape {shape} got {len(axes)} logical axes {axes}")
    for a in axes:
        if a not in LOGICAL_AXES:
            raise ValueError(f"unknown logical axis {a!r}; known: {LOGICAL_AXES}")
    value = init(key, shape, dtype)
    return nnx.Param(value, eager_sharding=False, **{_SHARDING_METADATA_KEY: axes})


def buffer(value: jax.Array, axes: Sequence[str | None]) -> nnx.Variable:
    """A non-trainable tensor that torch keeps as a buffer (e.g. SAM's random PE matrix)."""
    return Buffer(value, eager_sharding=False, **{_SHARDING_METADATA_KEY: tuple(axes)})


class Buffer(nnx.Variable):
    """Persistent, never-trained tensor (torch ``register_buffer``)."""


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names attached to ``variable`` (None if it has none)."""
    return variable.get_metadata().get(_SHARDING_METADATA_KEY)


def logical_to_mesh_spec(
    axes: Sequence[str | None] | None, rules: Sequence[tuple[str, str | Sequence[str] | None]]
) -> PartitionSpec:
    """Maps logical axis names to a mesh ``PartitionSpec`` with ``rules`` (first match wins).

    A mesh axis is used at most once per spec, as XLA requires.
    """
    if axes is None:
        return PartitionSpec()
    table = {}
    for logical, mesh_axes in rules:
        table.setdefault(logical, mesh_axes)
    used: set[str] = set()
    out = []
    for a in axes:
        mesh_axes = table.get(a) if a is not None else None
        if mesh_axes is None:
            out.append(None)
            continue
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        names = tuple(n for n in names if n not in used)
        used.update(names)
        out.append(names[0] if len(names) == 1 else (names or None))
    return PartitionSpec(*out)


def weight_shardings(state: nnx.State, mesh: Mesh, rules) -> tuple[dict, list[str]]:
    """Pure dict of ``NamedSharding`` from logical axes; a dim the mesh does not divide stays whole."""
    uneven = []

    def one(path, v):
        spec = logical_to_mesh_spec(logical_axes(v), rules)
        axes = list(spec) + [None] * (len(v.shape) - len(spec))
        for i, (dim, a) in enumerate(zip(v.shape, axes)):
            if a is None:
                continue
            names = (a,) if isinstance(a, str) else tuple(a)
            n = 1
            for name in names:
                n *= mesh.shape[name]
            if dim % n:
                uneven.append(f"{'.'.join(map(str, path))}{tuple(v.shape)} dim {i} over {names}")
                axes[i] = None
        return NamedSharding(mesh, PartitionSpec(*axes))

    flat = [(p, one(p, v)) for p, v in nnx.to_flat_state(state)]
    return nnx.to_pure_dict(nnx.from_flat_state(flat)) if flat else {}, uneven
