"""Logical axis names: every weight carries them, and the rules map them onto a mesh."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from crab_jax.parallel import sharding
from crab_jax.families.crab.model import Crab
from crab_jax.families.crab.presets import tiny_crab_config
from crab_jax.models.state_dict import WEIGHTS


def test_every_weight_of_crab_has_logical_axes():
    model = nnx.eval_shape(lambda: Crab(tiny_crab_config(), rngs=nnx.Rngs(0)))
    missing = []
    for path, v in nnx.to_flat_state(nnx.state(model, WEIGHTS)):
        axes = sharding.logical_axes(v)
        if axes is None or len(axes) != len(v.shape):
            missing.append((".".join(map(str, path)), v.shape, axes))
    assert not missing, f"weights without logical axes of matching rank: {missing[:10]}"


def test_ilora_axes_shard_router_by_input_and_heads_by_output():
    model = nnx.eval_shape(lambda: Crab(tiny_crab_config(), rngs=nnx.Rngs(0)))
    q = model.llm.model.layers[0].self_attn.q_proj
    assert sharding.logical_axes(q.lora_route)[0] == sharding.logical_axes(q.weight)[0] == "embed"
    assert sharding.logical_axes(q.lora_B) == ("lora_heads", "lora_rank", "heads")


def test_rules_map_logical_to_mesh_axes_once():
    rules = [("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", ("tensor", "fsdp"))]
    assert sharding.logical_to_mesh_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh_spec(("lora_heads", "lora_rank", "heads"), rules) == P(None, None, "tensor")
    # a mesh axis is used at most once per spec
    assert sharding.logical_to_mesh_spec(("vocab", "embed"), rules) == P(("tensor", "fsdp"), None)


def test_param_helper_rejects_unknown_axes_and_wrong_rank():
    key = jax.random.key(0)
    init = lambda k, s, d: np.zeros(s, d)
    with pytest.raises(ValueError, match="unknown logical axis"):
        sharding.param(init, key, (2,), ("not_an_axis",))
    with pytest.raises(ValueError, match="2 logical axes"):
        sharding.param(init, key, (2,), ("embed", "mlp"))
