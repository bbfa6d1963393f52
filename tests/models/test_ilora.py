"""I-LoRA layer: parity with the original peft_hyper lora.Linear and structural checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.ilora import ILoRAConfig, ILoRALinear
from crab_jax.models.state_dict import expected_shapes, load_flat
from tests.conftest import assert_parity
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.convert.tables.ilora import ilora_table
from crab_jax.checkpoints.convert.mapping import MappingError


def _layer_from_fixture(fixtures_dir, manifest):
    cfg = manifest["fixtures"]["ilora_linear"]["config"]
    sd = open_tensors(fixtures_dir / "ilora_linear" / "ilora_linear.safetensors")
    num_heads = sum(1 for k in sd if k.startswith("lora_B"))  # k from the checkpoint, not a constant
    lora = ILoRAConfig(r=cfg["r"], alpha=cfg["lora_alpha"], num_heads=num_heads, dropout=cfg["lora_dropout"])
    layer = ILoRALinear(cfg["in_features"], cfg["out_features"], lora, use_bias=cfg["bias"], rngs=nnx.Rngs(0))
    load_flat(layer, ilora_table().to_jax(sd, expected_shapes(layer)))
    layer.eval()
    return layer, cfg, sd


@pytest.mark.parity
def test_ilora_matches_original(fixtures_dir, manifest):
    layer, cfg, _ = _layer_from_fixture(fixtures_dir, manifest)
    arrays = np.load(fixtures_dir / "ilora_linear" / "ilora_linear.npz")
    assert layer.scaling == pytest.approx(float(arrays["scaling"]))
    y, gates = layer(jnp.asarray(arrays["x"]), return_gates=True)
    assert_parity(gates, arrays["route_weight"], "ilora route_weight")
    assert_parity(y, arrays["y"], "ilora y")


@pytest.mark.parity
def test_ilora_mapping_round_trip_is_bit_exact(fixtures_dir, manifest):
    layer, _, sd = _layer_from_fixture(fixtures_dir, manifest)
    back = ilora_table().to_torch({k: np.asarray(v) for k, v in ilora_table().to_jax(sd).items()})
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


@pytest.mark.parity
def test_ilora_rejects_missing_and_misshaped_keys(fixtures_dir, manifest):
    layer, _, sd = _layer_from_fixture(fixtures_dir, manifest)
    broken = dict(sd.items())
    broken.pop("lora_A.weight")
    with pytest.raises(MappingError, match="lora_A.weight"):
        ilora_table().to_jax(broken, expected_shapes(layer))
    broken = dict(sd.items())
    broken["lora_route.weight"] = broken["lora_route.weight"][:, :-1]
    with pytest.raises(MappingError, match=r"lora_route.*expected"):
        ilora_table().to_jax(broken, expected_shapes(layer))


def test_single_head_is_plain_lora():
    rngs = nnx.Rngs(0)
    cfg = ILoRAConfig(r=4, alpha=8, num_heads=1, dropout=0.0)
    layer = ILoRALinear(6, 5, cfg, rngs=rngs)
    layer.lora_B[...] = jax.random.normal(jax.random.key(1), layer.lora_B.shape)
    x = jax.random.normal(jax.random.key(2), (2, 3, 6))
    expected = x @ layer.weight[...] + cfg.scaling * (x @ layer.lora_A[...]) @ layer.lora_B[...][0]
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_gates_mix_heads_per_token():
    """Each token's output is the gate-weighted sum of per-head LoRA outputs."""
    cfg = ILoRAConfig(r=3, alpha=3, num_heads=4, dropout=0.0)
    layer = ILoRALinear(5, 7, cfg, rngs=nnx.Rngs(0))
    layer.lora_B[...] = jax.random.normal(jax.random.key(1), layer.lora_B.shape)
    x = jax.random.normal(jax.random.key(2), (1, 6, 5))
    y, g = layer(x, return_gates=True)
    per_head = jnp.stack([(x @ layer.lora_A[...]) @ layer.lora_B[...][h] for h in range(4)], -2)
    ref = x @ layer.weight[...] + jnp.einsum("bth,btho->bto", g, per_head)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
    assert float(jnp.std(g[0, :, 0])) > 0  # gates vary across tokens


def test_dropout_only_on_lora_input():
    cfg = ILoRAConfig(r=2, alpha=2, num_heads=2, dropout=0.5)
    layer = ILoRALinear(4, 3, cfg, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 2, 4))
    layer.eval()
    y_eval = layer(x)
    layer.train()
    # B is zero at init: dropout on the LoRA branch cannot change the output.
    np.testing.assert_allclose(layer(x), y_eval)
    layer.lora_B[...] = jnp.ones(layer.lora_B.shape)
    outs = {tuple(np.asarray(layer(x)).ravel().round(5)) for _ in range(4)}
    assert len(outs) > 1


@pytest.mark.parity
def test_missing_last_head_is_named(fixtures_dir, manifest):
    layer, _, sd = _layer_from_fixture(fixtures_dir, manifest)
    heads = sorted(k for k in sd if k.startswith("lora_B"))
    broken = {k: sd[k] for k in sd if k != heads[-1]}
    with pytest.raises(MappingError, match=f"missing key '{heads[-1]}'"):
        ilora_table().to_jax(broken, expected_shapes(layer))
