"""The ``crab_plus_7b`` preset at the real size, built abstractly (no weights allocated): sizes,
adapter counts, logical axes of every parameter."""

from __future__ import annotations

import json
import math

import pytest
from flax import nnx

from crab_jax.families.crab_plus.model import CrabPlusThinker
from crab_jax.families.crab_plus.presets import paper_thinker_config
from crab_jax.models.state_dict import flat_variables
from crab_jax.parallel.sharding import logical_axes


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real():
    import dataclasses
    cfg = paper_thinker_config()
    # Scanned, as a TPU run builds it (stacked [layers, ...] parameters, the same totals).
    towers = {n: dataclasses.replace(getattr(cfg, n), scan_layers=True) for n in ("text", "vision", "audio")}
    cfg = dataclasses.replace(cfg, **towers)
    model = nnx.eval_shape(lambda: CrabPlusThinker(cfg, rngs=nnx.Rngs(0)))
    return cfg, flat_variables(model)


def _keys(crab_plus_fixtures_dir):
    with open(crab_plus_fixtures_dir / "state_dict_names" / "real_thinker_keys.json") as f:
        return json.load(f)


def test_adapter_size_is_the_released_one(real, crab_plus_fixtures_dir):
    """Adapter parameters of the model = the sum over the released finetune_weights.bin's tensors."""
    _, variables = real
    ours = sum(math.prod(v.shape) for p, v in variables.items() if ".lora_" in p and isinstance(v, nnx.Param))
    theirs = sum(math.prod(shape) for shape in _keys(crab_plus_fixtures_dir)["adapter"].values())
    assert ours == theirs


def test_base_size_is_the_released_one(real, crab_plus_fixtures_dir):
    _, variables = real
    ours = sum(math.prod(v.shape) for p, v in variables.items() if ".lora_" not in p and isinstance(v, nnx.Param))
    theirs = sum(math.prod(shape) for shape in _keys(crab_plus_fixtures_dir)["base_checkpoint_thinker"].values())
    assert ours == theirs


def test_every_parameter_has_logical_axes(real):
    _, variables = real
    missing = [p for p, v in variables.items() if isinstance(v, nnx.Param)
               and (logical_axes(v) is None or len(logical_axes(v)) != len(v.shape))]
    assert not missing, missing[:5]
