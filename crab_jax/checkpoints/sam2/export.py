"""Writing SAM 2.1 weights (:class:`~crab_jax.checkpoints.sam2.weights.Sam2Weights`), each output atomic.

* :func:`write_converted`: a converted crab_jax folder, ``params/`` + ``sam2_config.json``
  (:func:`crab_jax.checkpoints.convert.output.write_checkpoint`);
* :func:`write_original`: the original's ``.pt``, ``{"model": state dict}`` under the original
  names (the image path only: a ``.pt`` read here loses its video-model keys);
* :func:`write_hf`: an HF ``Sam2Model`` folder, ``config.json`` (the one the weights came
  with, else one built from the sizes) + ``model.safetensors`` (or shards), the tied
  positional matrix under its first name only, as ``save_pretrained`` writes it.

Each tensor is written with the dtype it has in ``flat``: a round trip is bit-exact.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from crab_jax.checkpoints.convert.output import Converted, write_checkpoint
from crab_jax.checkpoints.convert.tables.sam2 import sam2_table
from crab_jax.checkpoints.convert.writers import save_torch_bin, write_hf_dir
from crab_jax.checkpoints.sam2.original_names import hf_to_original
from crab_jax.checkpoints.sam2.weights import CONFIG_FILE, Sam2Weights, config_json

HF_ARCHITECTURE = {"architectures": ["Sam2Model"], "model_type": "sam2"}
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


def _is_floating(dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16)


def converted(weights: Sam2Weights, dtype: np.dtype | None = None) -> Converted:
    """The :class:`Converted` checkpoint of ``weights`` (floating arrays cast to ``dtype`` when given)."""
    flat = weights.flat
    if dtype is not None:
        flat = {k: v.astype(dtype) if _is_floating(v.dtype) else v for k, v in flat.items()}
    notes = [f"from {weights.source}"] + ([f"cast to {np.dtype(dtype)}"] if dtype is not None else [])
    return Converted(flat, config_json(weights.cfg, weights.hf_config), ["sam2"], notes, dict(weights.ignored))


def write_converted(out: str, weights: Sam2Weights, *, dtype: np.dtype | None = None, overwrite: bool = False) -> None:
    write_checkpoint(out, converted(weights, dtype), CONFIG_FILE, overwrite=overwrite)


def hf_state(weights: Sam2Weights) -> dict[str, np.ndarray]:
    """HF ``Sam2Model`` key -> torch-layout array (the tied copy left out)."""
    return sam2_table(weights.cfg).to_torch(weights.flat, tied_names="first")


def write_original(out: str, weights: Sam2Weights, *, overwrite: bool = False) -> int:
    """``out``: the original's ``{"model": state dict}`` ``.pt``; returns the number of tensors."""
    state = hf_to_original(hf_state(weights))
    save_torch_bin(out, state, extra={}, overwrite=overwrite)  # {} + model=state: sam2.1_*.pt's layout
    return len(state)


def hf_config(weights: Sam2Weights) -> dict:
    """The ``config.json`` of an HF export: the source's own, else ``Sam2Config`` fields of the sizes."""
    if weights.hf_config is not None:
        return weights.hf_config
    return dict(HF_ARCHITECTURE, **weights.cfg.to_hf())


def write_hf(out: str, weights: Sam2Weights, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
             overwrite: bool = False) -> int:
    """``out``: an HF ``Sam2Model`` folder; returns the number of tensors."""
    state = hf_state(weights)
    write_hf_dir(out, hf_config(weights), state, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
    return len(state)
