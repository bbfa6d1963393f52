"""A model straight from a converted checkpoint folder (``crab-convert-weights to-jax`` output):
no training run, no optimizer, nothing drawn at random.

The folder holds ``params/`` (Orbax, one entry per layer, vocabulary unpadded) and the
family's model-config file (``family.checkpoint_config`` reads it). Every weight of the
model must be in it (:func:`crab_jax.checkpoints.converted.load_converted_weights` names any
missing / unexpected / mis-shaped array); arrays land on one device, cast to the model's
parameter dtypes.
"""

from __future__ import annotations

import os

import jax
from flax import nnx
from jax.sharding import SingleDeviceSharding

from crab_jax.checkpoints.converted import load_converted_weights
from crab_jax.families.base import Family
from crab_jax.models.rngs import make_rngs
from crab_jax.models.state_dict import abstract_module, expected_shapes, load_flat


def load_converted_model(family: Family, folder: str | os.PathLike, device=None):
    """``(model_cfg, model)``: the family's model as the folder's config describes it, with its
    weights (on ``device``, default the first one)."""
    if family.checkpoint_config is None:
        raise ValueError(f"model family {family.name!r} cannot read a converted checkpoint "
                         "(its Family has no checkpoint_config hook)")
    folder = os.fspath(folder)
    model_cfg = family.checkpoint_config(folder)
    model = abstract_module(lambda: family.build_model(model_cfg, make_rngs(0)))
    sharding = SingleDeviceSharding(device if device is not None else jax.devices()[0])
    wanted = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
              for name, (shape, dtype) in expected_shapes(model).items()}
    arrays = load_converted_weights(folder, wanted, vocab=family.vocab_sizes(model_cfg))
    load_flat(model, arrays, source=folder)
    # Commit every variable (the RNG streams too) to the device: jit outputs are committed, and
    # a first call on uncommitted inputs would make the second call compile the generator again.
    nnx.update(model, jax.device_put(nnx.state(model), sharding))
    return model_cfg, model
