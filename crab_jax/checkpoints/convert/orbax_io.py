"""The crab_jax checkpoint layout written and read by the converter.

A converted checkpoint is a directory::

    <out>/params/            Orbax PyTree checkpoint of the nested parameter dict: the flat
                             crab_jax path "llm.model.layers.0.self_attn.q_proj.weight" is
                             params["llm"]["model"]["layers"]["0"]["self_attn"]["q_proj"]["weight"]
                             (every key a string; leaves are numpy arrays, torch-free layouts)
    <out>/crab_config.json   crab_jax.families.crab.config_io JSON of the matching model config
                             (all sections for a whole Crab, a subset for one component)

To load it into a model: ``load_flat(model, restore_flat(out))`` (``crab_jax.models.state_dict``),
with ``model`` built from ``config_io.load_crab_config(out)``.

Writes are atomic: everything goes to ``<out>.partial-<pid>/`` and is renamed to ``<out>``
only when complete, so a failure leaves no half-written checkpoint at ``<out>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

import numpy as np

from crab_jax.checkpoints.converted import PARAMS_DIR, nest  # the layout is defined where it is read
from crab_jax.models.state_dict import flat_leaves


def _partial_path(out, overwrite: bool) -> tuple[str, str]:
    """``(absolute out, its temporary sibling)``; refuses an existing ``out`` unless ``overwrite``."""
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return out, f"{out}.partial-{os.getpid()}"


@contextlib.contextmanager
def atomic_dir(out: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary sibling of ``out``; on success it replaces ``out``, on error it is removed."""
    out, tmp = _partial_path(out, overwrite)
    if os.path.exists(tmp):
        shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out):
        old = f"{out}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    else:
        os.rename(tmp, out)


@contextlib.contextmanager
def atomic_file(out: str, *, overwrite: bool = False) -> Iterator[str]:
    """Like :func:`atomic_dir` for one file."""
    out, tmp = _partial_path(out, overwrite)
    try:
        yield tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, out)


def _checkpointer():
    """A PyTree checkpointer that writes the caller's numpy arrays in place.

    Orbax's default numpy handler deep-copies every host array before writing, and zstd
    compression buffers encoded chunks: either doubles the peak memory of a save. Weights
    do not compress anyway, so both are off (measured: 1.0x instead of 2.0x the model).
    """
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.serialization import type_handler_registry as registry
    from orbax.checkpoint._src.serialization import type_handlers

    handlers = [(t, h) for t, h in registry._DEFAULT_TYPE_HANDLERS if t is not np.ndarray]
    handlers.append((np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
    handler = ocp.PyTreeCheckpointHandler(
        type_handler_registry=registry.create_type_handler_registry(*handlers), use_compression=False)
    return ocp.Checkpointer(handler)


def save_params(folder: str, flat: dict[str, np.ndarray]) -> None:
    """Writes ``flat`` (crab_jax path -> numpy array) as ``folder/params``.

    ``flat`` is not copied: Orbax writes the given arrays (one copy of the model in memory).
    """
    import orbax.checkpoint as ocp

    _checkpointer().save(os.path.join(os.path.abspath(folder), PARAMS_DIR), args=ocp.args.PyTreeSave(nest(flat)))


def is_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(path, PARAMS_DIR))


def params_metadata(folder: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """crab_jax path -> (shape, dtype) from the checkpoint's metadata (reads no tensor data)."""
    from crab_jax.checkpoints.converted import saved_shapes

    return {k: (shape, np.dtype(dtype)) for k, (shape, dtype) in saved_shapes(folder).items()}


def restore_flat(folder: str) -> dict[str, np.ndarray]:
    """``folder/params`` -> flat crab_jax path -> numpy array (host memory, saved dtypes)."""
    import orbax.checkpoint as ocp

    meta = params_metadata(folder)  # raises naming the folder if it is no checkpoint
    restore_args = nest({k: ocp.RestoreArgs(restore_type=np.ndarray) for k in meta})
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(os.path.abspath(folder), PARAMS_DIR),
                                            restore_args=restore_args)
    return flat_leaves(tree)
