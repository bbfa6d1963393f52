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


def test_constrain_is_a_no_op_outside_the_trainers_context_and_checks_its_axes():
    x = jax.numpy.ones((4, 6, 8))
    axes = ("activation_batch", "activation_length", "activation_embed")
    assert sharding.constrain(x, axes) is x
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    rules = (("activation_batch", ("data", "fsdp")), ("activation_embed", "tensor"))
    with sharding.activation_sharding(mesh, rules):
        with pytest.raises(ValueError, match="2 logical axes"):
            sharding.constrain(x, axes[:2])
        with pytest.raises(ValueError, match="unknown logical activation axis 'embed'"):
            sharding.constrain(x, ("activation_batch", "activation_length", "embed"))
        out = jax.jit(lambda v: sharding.constrain(v, axes))(x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    assert sharding.constrain(x, axes) is x  # the context ended
