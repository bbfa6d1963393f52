"""The parameters of a converted crab_jax checkpoint: ``<dir>/params``, an Orbax PyTree.

A converted checkpoint is a directory::

    <out>/params/         Orbax PyTree checkpoint of the nested parameter dict: the flat
                          crab_jax path "llm.model.layers.0.self_attn.q_proj.weight" is
                          params["llm"]["model"]["layers"]["0"]["self_attn"]["q_proj"]["weight"]
                          (every key a string; leaves are numpy arrays, torch-free layouts)
    <out>/<config file>   the family's JSON of the matching model config (its converter's
                          ``config_file``; all sections for a whole model, a subset for one component)

To load it into a model: ``load_flat(model, restore_flat(out))`` (``crab_jax.models.state_dict``),
with ``model`` built from the family's ``load_model_config(out)``. Writers go through
:mod:`crab_jax.checkpoints.convert.atomic`, so no half-written checkpoint is ever left at ``<out>``.
"""

from __future__ import annotations

import os

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import type_handler_registry as registry
from orbax.checkpoint._src.serialization import type_handlers

from crab_jax.checkpoints.converted import PARAMS_DIR, nest, saved_shapes  # the layout is defined where it is read
from crab_jax.models.state_dict import flat_leaves


def _checkpointer():
    """A PyTree checkpointer that writes the caller's numpy arrays in place.

    Orbax's default numpy handler deep-copies every host array before writing, and zstd
    compression buffers encoded chunks: either doubles the peak memory of a save. Weights
    do not compress anyway, so both are off (measured: 1.0x instead of 2.0x the model).
    """
    handlers = [(t, h) for t, h in registry._DEFAULT_TYPE_HANDLERS if t is not np.ndarray]
    handlers.append((np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
    handler = ocp.PyTreeCheckpointHandler(
        type_handler_registry=registry.create_type_handler_registry(*handlers), use_compression=False)
    return ocp.Checkpointer(handler)


def save_params(folder: str, flat: dict[str, np.ndarray]) -> None:
    """Writes ``flat`` (crab_jax path -> numpy array) as ``folder/params``.

    ``flat`` is not copied: Orbax writes the given arrays (one copy of the model in memory).
    """
    _checkpointer().save(os.path.join(os.path.abspath(folder), PARAMS_DIR), args=ocp.args.PyTreeSave(nest(flat)))


def is_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(path, PARAMS_DIR))


def params_metadata(folder: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """crab_jax path -> (shape, dtype) from the checkpoint's metadata (reads no tensor data)."""
    return {k: (shape, np.dtype(dtype)) for k, (shape, dtype) in saved_shapes(folder).items()}


def restore_flat(folder: str) -> dict[str, np.ndarray]:
    """``folder/params`` -> flat crab_jax path -> numpy array (host memory, saved dtypes)."""
    meta = params_metadata(folder)  # raises naming the folder if it is no checkpoint
    restore_args = nest({k: ocp.RestoreArgs(restore_type=np.ndarray) for k in meta})
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(os.path.abspath(folder), PARAMS_DIR),
                                            restore_args=restore_args)
    return flat_leaves(tree)
