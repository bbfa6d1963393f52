"""The Crab+ thinker against the original's outputs (fixtures thinker_text / thinker_av).

Every size comes from the fixture's config and manifest: the same tests pass on a fixture
folder built with other widths, head counts, M-RoPE split, windows, chunk sizes or batches.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.families.crab_plus.layout import thinker_batch
from crab_jax.models.ilora import record_router_gates
from tests.conftest import assert_parity
from tests.families.crab_plus.thinker_helpers import (
    device_batch, fixture_arrays, fixture_config, fixture_thinker, tolerance)

pytestmark = pytest.mark.parity
MODEL_FIXTURES = ("thinker_text", "thinker_av")


@pytest.fixture(scope="module", params=MODEL_FIXTURES)
def case(request, crab_plus_fixtures_dir, crab_plus_manifest):
    name = request.param
    model = fixture_thinker(crab_plus_fixtures_dir, crab_plus_manifest, name)
    arrays = fixture_arrays(crab_plus_fixtures_dir, name)
    batch = device_batch(arrays, model.cfg)
    return name, model, arrays, batch, model(batch)


def test_positions_and_deltas_are_the_originals(case):
    """M-RoPE position ids (pads 1) and the decode offsets are exact."""
    _, model, arrays, batch, _ = case
    # The batch is batch-major [b, 3, S]; the original's position ids are [3, b, S].
    np.testing.assert_array_equal(np.asarray(batch["position_ids"]).swapaxes(0, 1), arrays["position_ids"])
    np.testing.assert_array_equal(np.asarray(batch["rope_deltas"]), arrays["rope_deltas"])


def test_logits_hidden_and_loss(case, crab_plus_manifest):
    name, _, arrays, _, out = case
    tol = tolerance(crab_plus_manifest, name)
    assert_parity(out.inputs_embeds, arrays["inputs_embeds"], f"{name} inputs_embeds", tol)
    assert_parity(out.hidden, arrays["hidden_final_norm"], f"{name} final hidden (all positions)", tol)
    assert_parity(out.logits, arrays["logits"], f"{name} logits (all positions, pads included)", tol)
    assert abs(float(out.lm_loss) - float(arrays["loss"])) <= tol * abs(float(arrays["loss"]))


def test_router_probes(case, crab_plus_manifest):
    """The adapted linears the fixture probes: router softmax, input and output, from the real forward."""
    name, model, arrays, batch, _ = case
    tol = tolerance(crab_plus_manifest, name)
    probes = sorted(k[len("route_"):] for k in arrays if k.startswith("route_"))
    assert probes, f"{name}: the fixture has no router probes"
    layers = model.model.layers
    llm = {"llm_layer0_q_proj": layers[0].self_attn.q_proj, "llm_last_down_proj": layers[-1].mlp.down_proj,
           "vision_block0_gate_proj": model.visual.blocks[0].mlp.gate_proj,
           "audio_layer0_k_proj": model.audio_tower.layers[0].self_attn.k_proj}
    for probe in probes:
        layer = llm[probe]
        y, gates = layer(jnp.asarray(arrays[f"probe_in_{probe}"]), return_gates=True)
        assert_parity(gates, arrays[f"route_{probe}"], f"{name} {probe} router", tol)
        assert_parity(y, arrays[f"probe_out_{probe}"], f"{name} {probe} output", tol)
    # The probed inputs are the real ones: layer 0's q_proj sees the normed embeddings.
    normed = layers[0].input_layernorm(jnp.asarray(arrays["inputs_embeds"]))
    assert_parity(normed, arrays["probe_in_llm_layer0_q_proj"], f"{name} layer0 q_proj input", tol)


def test_scanned_layers_equal_the_loop(case, crab_plus_fixtures_dir, crab_plus_manifest):
    name, _, arrays, batch, out = case
    scanned = fixture_thinker(crab_plus_fixtures_dir, crab_plus_manifest, name, scan_layers=True)
    assert_parity(scanned(batch).logits, out.logits, f"{name} scanned vs loop", 1e-5)


def test_adapters_matter(case, crab_plus_fixtures_dir, crab_plus_manifest):
    """Negative control: the thinker without its I-LoRA weights is far from the fixture."""
    name, model, arrays, batch, _ = case
    for _, node in nnx.iter_modules(model):
        if hasattr(node, "lora_B"):
            node.lora_B.set_value(jnp.zeros_like(node.lora_B[...]))
    try:
        logits = np.asarray(model(batch).logits)
        err = np.abs(logits - arrays["logits"]).max() / np.abs(arrays["logits"]).max()
        assert err > 100 * tolerance(crab_plus_manifest, name), err
    finally:  # the module-scoped model is shared: restore it
        fresh = fixture_thinker(crab_plus_fixtures_dir, crab_plus_manifest, name)
        for (_, node), (_, src) in zip(nnx.iter_modules(model), nnx.iter_modules(fresh)):
            if hasattr(node, "lora_B"):
                node.lora_B.set_value(src.lora_B[...])


def test_gates_are_sown_in_every_tower(case):
    """Router gates are recorded for the trainer's metrics in all three towers when asked."""
    name, model, _, batch, _ = case
    count = record_router_gates(model, True)
    try:
        _, inter = nnx.capture(lambda m: m(batch), nnx.Intermediate)(model)
    finally:
        record_router_gates(model, False)
    towers = {str(path[0]) for path, _ in nnx.to_flat_state(inter)}
    expected = {"model"} | ({"visual", "audio_tower"} if int(np.asarray(batch["pixel_slices"]).shape[1]) else set())
    assert count > 0 and towers == expected, (name, towers)


def test_layout_rejects_a_batch_whose_media_do_not_match(crab_plus_fixtures_dir, crab_plus_manifest):
    arrays = fixture_arrays(crab_plus_fixtures_dir, "thinker_av")
    cfg = fixture_config(crab_plus_fixtures_dir, crab_plus_manifest, "thinker_av")
    kind, key = next((k, p) for k, p in (("video", "pixel_values_videos"), ("image", "pixel_values")) if p in arrays)
    short = dict(arrays, **{key: arrays[key][:-cfg.patches_per_slice]})
    with pytest.raises(ValueError, match=f"{kind} .*pixel values have"):
        thinker_batch(short, cfg)
    with pytest.raises(ValueError, match="visual slots"):
        thinker_batch(arrays, cfg, visual_slots=0)
