"""The existing I-LoRA layer against Crab+'s peft_hyper Linear (fixture ilora_linear_plus):
any input rank (the towers feed 2-D rows), bias / no bias, one dropout draw for all heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.convert.tables.ilora import ilora_table
from crab_jax.models.ilora import ILoRAConfig, ILoRALinear
from crab_jax.models.state_dict import expected_shapes, load_flat
from tests.conftest import assert_parity

pytestmark = pytest.mark.parity
FIXTURE = "ilora_linear_plus"


def _config(manifest):
    return manifest["fixtures"][FIXTURE]["config"]


def _layer(fixtures_dir, manifest, case: str) -> ILoRALinear:
    cfg = _config(manifest)
    sd = open_tensors(fixtures_dir / FIXTURE / f"{case}.safetensors")
    heads = sum(1 for k in sd if k.startswith("lora_B"))
    assert heads == cfg["lora_nums"], "head count of the file differs from the manifest"
    lora = ILoRAConfig(r=cfg["r"], alpha=cfg["lora_alpha"], num_heads=heads, dropout=cfg["lora_dropout"])
    layer = ILoRALinear(cfg["in_features"], cfg["out_features"], lora, use_bias="bias" in sd, rngs=nnx.Rngs(0))
    load_flat(layer, ilora_table().to_jax(sd, expected_shapes(layer)))
    return layer


@pytest.fixture(params=["bias", "nobias"])
def case(request, crab_plus_fixtures_dir, crab_plus_manifest):
    if request.param not in _config(crab_plus_manifest)["cases"]:
        pytest.fail(f"manifest lists cases {_config(crab_plus_manifest)['cases']}")
    return request.param


def test_every_input_rank(case, crab_plus_fixtures_dir, crab_plus_manifest):
    layer = _layer(crab_plus_fixtures_dir, crab_plus_manifest, case)
    layer.eval()
    tol = crab_plus_manifest["fixtures"][FIXTURE]["suggested_tolerance"]["suggested_atol_relative_to_max_abs_of_reference"]
    arrays = np.load(crab_plus_fixtures_dir / FIXTURE / f"{case}.npz")
    assert layer.scaling == pytest.approx(float(arrays["scaling"]))
    for j, shape in enumerate(_config(crab_plus_manifest)["shapes"]):
        x = arrays[f"x{j}"]
        assert list(x.shape[:-1]) == list(shape)
        y, gates = layer(jnp.asarray(x), return_gates=True)
        assert_parity(gates, arrays[f"route_weight{j}"], f"{case} route{j}", tol)
        assert_parity(y, arrays[f"y{j}"], f"{case} y{j}", tol)
        frozen = super(ILoRALinear, layer).__call__(jnp.asarray(x))
        assert_parity(frozen, arrays[f"base_out{j}"], f"{case} frozen part{j}", tol)


def test_training_dropout_is_one_draw_shared_by_the_heads(crab_plus_fixtures_dir, crab_plus_manifest):
    """Train mode: y = Wx + s * sum_h g_h(x) B_h A(dropout(x)) with ONE mask; the router sees x."""
    layer = _layer(crab_plus_fixtures_dir, crab_plus_manifest, "bias")
    layer.lora_dropout.rngs = nnx.Rngs(dropout=7).dropout
    layer.train()
    x = jnp.asarray(np.load(crab_plus_fixtures_dir / FIXTURE / "bias.npz")["x0"])
    y, gates = layer(x, return_gates=True)
    # Recover the one mask the layer drew: replay the same RNG stream.
    layer.lora_dropout.rngs = nnx.Rngs(dropout=7).dropout
    dropped = layer.lora_dropout(x)
    a, b = layer.lora_A[...], layer.lora_B[...]
    base = super(ILoRALinear, layer).__call__(x)
    expected = base + layer.scaling * sum(gates[..., h:h + 1] * ((dropped @ a) @ b[h]) for h in range(b.shape[0]))
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(dropped), np.asarray(x))  # dropout really was on
    eval_gates = jax.nn.softmax(x @ layer.lora_route[...], axis=-1)
    np.testing.assert_allclose(np.asarray(gates), np.asarray(eval_gates), rtol=1e-6, atol=1e-6)
