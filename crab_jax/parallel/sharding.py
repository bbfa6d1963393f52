"""Logical-axis sharding metadata: the one place that talks to Flax's sharding API.

Every parameter in crab_jax is created through :func:`param`, which attaches a tuple of
*logical* axis names (``embed``, ``mlp``, ``heads``, ``lora_rank`` ...). The mesh and the
rules that map logical names to mesh axes come from the config (MaxText style), so a
Flax API rename is a one-line fix here and nowhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
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

# Logical axes of activations (MaxText style), pinned by :func:`constrain` inside
# :func:`activation_sharding`; the config's rules map them like the parameters' axes.
ACTIVATION_AXES = (
    "activation_batch",    # samples of a (micro-)batch
    "activation_length",   # sequence positions
    "activation_embed",    # hidden states' width
    "activation_heads",    # attention query heads
    "activation_kv",       # key / value heads
    "activation_mlp",      # feed-forward hidden width
    "activation_vocab",    # logits' vocabulary
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


# The mesh and rules that :func:`constrain` uses while a step is traced (None: no constraints).
_ACTIVATION_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
    """While tracing inside this context, :func:`constrain` pins activations to ``mesh`` by ``rules``.

    The trainer traces its step inside it, so XLA does not choose replicated hidden states under
    FSDP; decoding, tests and conversion trace outside it and models stay mesh-free."""
    token = _ACTIVATION_CONTEXT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVATION_CONTEXT.reset(token)


def activation_spec(shape: Sequence[int], axes: Sequence[str | None]) -> tuple[Mesh, PartitionSpec] | None:
    """The mesh and ``PartitionSpec`` of an activation of ``shape`` with logical ``axes`` (one per
    dim) inside :func:`activation_sharding`; None outside. A mesh axis that does not divide its dim
    is dropped for that dim (a micro-batch smaller than the batch shards stays whole)."""
    context = _ACTIVATION_CONTEXT.get()
    if context is None:
        return None
    if len(axes) != len(shape):
        raise ValueError(f"constrain: {len(axes)} logical axes {tuple(axes)} for an array of shape {tuple(shape)}")
    for a in axes:
        if a is not None and a not in ACTIVATION_AXES:
            raise ValueError(f"unknown logical activation axis {a!r}; known: {ACTIVATION_AXES}")
    mesh, rules = context
    spec = logical_to_mesh_spec(axes, rules)
    dims = []
    for dim, a in zip(shape, list(spec) + [None] * (len(shape) - len(spec))):
        names = () if a is None else (a,) if isinstance(a, str) else tuple(a)
        names = tuple(n for n in names if mesh.shape[n] > 1)
        dims.append(None if not names or dim % math.prod(mesh.shape[n] for n in names) else
                    (names[0] if len(names) == 1 else names))
    return mesh, PartitionSpec(*dims)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``x`` with a sharding constraint from its logical activation ``axes`` (one per dim) inside
    :func:`activation_sharding`, else ``x`` unchanged (:func:`activation_spec`)."""
    found = activation_spec(x.shape, axes)
    if found is None:
        return x
    mesh, spec = found
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


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
