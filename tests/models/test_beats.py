"""BEATs encoder: parity with the original on real audio, mapping round trips, structure."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.beats import Beats, BeatsConfig, relative_position_buckets
from crab_jax.parallel.sharding import LOGICAL_AXES, logical_axes
from crab_jax.models.state_dict import abstract_module, expected_shapes, flat_arrays, flat_variables, load_flat
from tests.conftest import assert_parity
from crab_jax.families.crab.convert.beats_table import beats_table, load_beats
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.convert.mapping import MappingError


def _checkpoint(fixtures_dir):
    return open_tensors(fixtures_dir / "beats" / "beats_tiny.pt", subkey="model")


def _abstract(cfg: BeatsConfig) -> Beats:
    """The model's structure without computing a random init (no per-shape compiles)."""
    return abstract_module(lambda: Beats(cfg, rngs=nnx.Rngs(0)))


def _fill(model: Beats, flat) -> Beats:
    load_flat(model, flat)
    return model


@pytest.fixture(scope="module")
def beats(fixtures_dir, manifest):
    """(model, cfg, torch state dict) from beats_tiny.pt."""
    sd = _checkpoint(fixtures_dir)
    cfg = BeatsConfig.from_checkpoint_cfg(sd.extra["cfg"])
    # The .pt's cfg is the config the fixture was generated with.
    for key, value in manifest["fixtures"]["beats"]["config"]["beats_cfg"].items():
        if hasattr(cfg, key):
            assert getattr(cfg, key) == value, key
    model = _abstract(cfg)
    _fill(model, beats_table(cfg).to_jax(sd, expected_shapes(model)))
    return model, cfg, sd


@pytest.fixture(scope="module")
def arrays(fixtures_dir):
    return np.load(fixtures_dir / "beats" / "beats.npz")


def _jitted(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, fbank):
        return nnx.merge(graphdef, state)(fbank, return_layer_outputs=True)

    return lambda fbank: run(state, jnp.asarray(fbank))


@pytest.mark.parity
def test_relative_position_buckets_and_bias_match_original(beats, arrays):
    model, cfg, _ = beats
    sizes = sorted(int(m.group(1)) for k in arrays.files if (m := re.fullmatch(r"relpos_bucket_T(\d+)", k)))
    assert sizes, "no relpos_bucket_T* arrays"
    for t in sizes:
        buckets = relative_position_buckets(t, t, cfg.num_buckets, cfg.max_distance)
        ref = arrays[f"relpos_bucket_T{t}"]
        mismatches = int((np.asarray(buckets) != ref).sum())
        print(f"relpos_bucket_T{t}: {mismatches} of {ref.size} buckets differ "
              f"(largest bucket {int(ref.max())}, exact range < {cfg.num_buckets // 4})")
        assert mismatches == 0
        bias = jax.jit(model.encoder.position_bias, static_argnums=0)(t)
        assert_parity(bias, arrays[f"relpos_bias_T{t}"], f"relpos_bias_T{t}")


@pytest.mark.parity
def test_features_and_layer_outputs_match_original(beats, arrays):
    model, cfg, _ = beats
    run = _jitted(model)  # the parity run is the jitted forward
    tasks = sorted(k[: -len("_features")] for k in arrays.files if k.endswith("_features"))
    assert tasks
    for task in tasks:
        fbank = arrays[f"{task}_fbank"]  # [segments, frames, mel]
        ref_features = arrays[f"{task}_features"]
        layer_keys = sorted((int(m.group(1)), k) for k in arrays.files
                            if (m := re.fullmatch(rf"{re.escape(task)}_layer(\d+)_output", k)))
        assert [l for l, _ in layer_keys] == list(range(cfg.encoder_layers)), layer_keys

        # 3-D call: every segment is one sequence.
        features, layers = run(fbank)
        assert features.shape == (fbank.shape[0], cfg.num_tokens(fbank.shape[1], fbank.shape[2]),
                                  cfg.encoder_embed_dim)
        for l, key in layer_keys:
            assert_parity(layers[l], arrays[key], f"{key} (3-D call)")
        assert_parity(features.reshape(ref_features.shape), ref_features, f"{task}_features (3-D call)")

        # 4-D call: [b, t, frames, mel] -> [b, t, tokens, C].
        if ref_features.ndim == 4:
            batched = fbank.reshape(ref_features.shape[:2] + fbank.shape[1:])
        else:
            batched = fbank[None]
        features4, layers4 = run(batched)
        assert features4.shape == batched.shape[:2] + features.shape[1:]
        assert_parity(features4.reshape(ref_features.shape), ref_features, f"{task}_features (4-D call)")
        assert_parity(layers4[-1].reshape(features.shape), layers[-1], f"{task} last layer 4-D vs 3-D")


@pytest.mark.parity
@pytest.mark.parametrize("filename", ["beats_tiny.pt", "beats_tiny.safetensors"])
def test_mapping_round_trip_is_bit_exact(fixtures_dir, beats, filename):
    model, cfg, _ = beats
    sd = open_tensors(fixtures_dir / "beats" / filename, **({"subkey": "model"} if filename.endswith(".pt") else {}))
    table = beats_table(cfg)
    flat = table.to_jax(sd, expected_shapes(model))
    # The shared table is stored once but listed under every layer's torch name.
    shared = [k for k in sd if k.endswith("relative_attention_bias.weight")]
    assert len(shared) == cfg.encoder_layers
    assert sum(k.endswith("relative_attention_bias.weight") for k in flat) == 1
    back = table.to_torch(flat)
    assert sorted(back) == sorted(sd)
    for k in sd:
        ref = sd[k]
        assert back[k].dtype == ref.dtype and back[k].shape == ref.shape, k
        assert np.array_equal(back[k], ref), k
    # And through the model's own variables.
    back = table.to_torch(flat_arrays(model))
    for k in sd:
        assert np.array_equal(back[k], sd[k]), k


@pytest.mark.parity
def test_rejects_missing_misshaped_and_diverging_keys(beats):
    model, cfg, sd = beats
    table = beats_table(cfg)
    expected = expected_shapes(model)
    key = "encoder.layers.0.self_attn.k_proj.weight"
    broken = {k: sd[k] for k in sd if k != key}
    with pytest.raises(MappingError, match=re.escape(key)):
        table.to_jax(broken, expected)

    key = "encoder.pos_conv.0.weight_v"
    broken = {k: sd[k] for k in sd}
    broken[key] = broken[key][:, :, :-1]
    with pytest.raises(MappingError, match=re.escape(key)):
        table.to_jax(broken, expected)

    last = f"encoder.layers.{cfg.encoder_layers - 1}.self_attn.relative_attention_bias.weight"
    broken = {k: sd[k] for k in sd}
    broken[last] = broken[last] + 1.0
    with pytest.raises(MappingError, match=re.escape(last)):
        table.to_jax(broken, expected)

    broken = {k: sd[k] for k in sd}
    broken["encoder.layers.0.self_attn.bias_k"] = np.zeros((1, 1, cfg.encoder_embed_dim), np.float32)
    with pytest.raises(MappingError, match="bias_k"):
        table.to_jax(broken, expected)


@pytest.mark.parity
def test_load_beats_reads_cfg_from_checkpoint(fixtures_dir, beats, arrays):
    model, cfg, _ = beats
    loaded = load_beats(fixtures_dir / "beats" / "beats_tiny.pt")
    assert loaded.cfg == cfg
    for k, v in flat_arrays(loaded).items():
        assert np.array_equal(v, flat_arrays(model)[k]), k


def test_config_from_checkpoint_cfg():
    base = dict(input_patch_size=16, embed_dim=8, encoder_layers=2, encoder_embed_dim=16,
                encoder_ffn_embed_dim=32, encoder_attention_heads=2, conv_pos=4, conv_pos_groups=2)
    cfg = BeatsConfig.from_checkpoint_cfg(dict(base, tokenizer_layers=12, some_training_option=0.5))
    assert cfg.encoder_embed_dim == 16 and cfg.num_buckets == 320  # original default
    for missing in ("encoder_layers", "conv_pos"):
        with pytest.raises(ValueError, match=missing):
            BeatsConfig.from_checkpoint_cfg({k: v for k, v in base.items() if k != missing})
    with pytest.raises(ValueError, match="activation_fn"):
        BeatsConfig.from_checkpoint_cfg(dict(base, activation_fn="glu"))


def _tiny(**overrides) -> BeatsConfig:
    return BeatsConfig(**{**dict(
        input_patch_size=4, embed_dim=8, encoder_layers=2, encoder_embed_dim=12, encoder_ffn_embed_dim=16,
        encoder_attention_heads=3, conv_pos=4, conv_pos_groups=3, deep_norm=True,
        relative_position_embedding=True, num_buckets=16, max_distance=20, gru_rel_pos=True,
        finetuned_model=True, predictor_class=5), **overrides})


def _random_model(cfg: BeatsConfig, seed: int = 0) -> Beats:
    """A model with noise in every weight (a fresh init has zero biases and unit gates)."""
    model = _abstract(cfg)
    rng = np.random.default_rng(seed)
    flat = {}
    for name, (shape, dtype) in expected_shapes(model).items():
        noise = rng.standard_normal(shape)
        scaled = 1.0 + 0.1 * noise if name.endswith(("weight_g", "norm.weight")) else 0.3 * noise
        flat[name] = scaled.astype(dtype)
    return _fill(model, flat)


def _forward(model: Beats):
    """``fbank -> features`` under jax.jit (one compile per structure and input shape)."""
    graphdef, state = nnx.split(model)
    return lambda fbank: _run(graphdef, state, jnp.asarray(fbank))


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, fbank):
    return nnx.merge(graphdef, state)(fbank)


def test_structure_and_logical_axes():
    cfg = _tiny()
    model = _abstract(cfg)
    shapes = expected_shapes(model)
    tables = [k for k in shapes if "relative_attention_bias" in k]
    assert tables == ["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    assert shapes["encoder.pos_conv.0.weight_v"][0] == (cfg.conv_pos, cfg.encoder_embed_dim // cfg.conv_pos_groups,
                                                        cfg.encoder_embed_dim)
    assert "predictor.weight" in shapes and "post_extract_proj.weight" in shapes
    for name, v in flat_variables(model).items():
        axes = logical_axes(v)
        assert axes is not None and len(axes) == len(v.shape), name
        assert all(a in LOGICAL_AXES for a in axes), name
    # Equal widths: no projection, as in the original.
    assert "post_extract_proj.weight" not in expected_shapes(_abstract(_tiny(embed_dim=12)))


@pytest.mark.parametrize("conv_pos", [4, 5])
def test_segments_are_encoded_independently_and_trailing_frames_dropped(conv_pos):
    cfg = _tiny(conv_pos=conv_pos)
    run = _forward(_random_model(cfg))
    fbank = np.random.default_rng(1).standard_normal((2, 3, 18, 16)).astype(np.float32)  # 2 frames unused
    out = run(fbank)
    assert out.shape == (2, 3, cfg.num_tokens(18, 16), cfg.encoder_embed_dim)
    # The same segment in other company (and another slot) gives the same tokens.
    one = run(np.broadcast_to(fbank[1, 2], fbank.shape))
    np.testing.assert_allclose(one[0, 0], out[1, 2], rtol=1e-5, atol=1e-5)
    tail = fbank.copy()
    tail[..., 16:, :] = 5.0
    np.testing.assert_allclose(run(tail), out, rtol=1e-6, atol=1e-6)
    head = fbank.copy()
    head[..., 0, :] = 5.0
    assert not np.allclose(run(head), out, atol=1e-3)


def test_weight_norm_is_recomputed_from_g_and_v():
    model = _random_model(_tiny())
    fbank = np.random.default_rng(1).standard_normal((2, 16, 16)).astype(np.float32)
    out = _forward(model)(fbank)
    conv = model.encoder.pos_conv[0]
    conv.weight_v.set_value(conv.weight_v[...] * 7.0)  # direction unchanged -> same weight
    np.testing.assert_allclose(_forward(model)(fbank), out, rtol=1e-5, atol=1e-5)
    conv.weight_g.set_value(conv.weight_g[...] * 2.0)
    assert not np.allclose(_forward(model)(fbank), out, atol=1e-3)


def test_gate_bias_and_variants():
    cfg = _tiny()
    model = _random_model(cfg)
    fbank = np.random.default_rng(1).standard_normal((1, 16, 16)).astype(np.float32)
    out = _forward(model)(fbank)
    # The shared table is used by every layer: perturbing it moves the output.
    table = model.encoder.layers[0].self_attn.relative_attention_bias.weight
    # (a constant shift would not do: the gate is constant along keys, softmax ignores it)
    table.set_value(table[...] + np.random.default_rng(2).standard_normal(table.shape).astype(np.float32))
    moved = _forward(model)(fbank)
    assert not np.allclose(moved, out, atol=1e-3)
    # grep_a enters through the gate of its own layer.
    grep_a = model.encoder.layers[-1].self_attn.grep_a
    grep_a.set_value(grep_a[...] + 3.0)
    assert not np.allclose(_forward(model)(fbank), moved, atol=1e-3)
    # Other architecture flags build and run.
    for variant in (_tiny(deep_norm=False, layer_norm_first=True, gru_rel_pos=False, conv_bias=True),
                    _tiny(relative_position_embedding=False, gru_rel_pos=False)):
        y = _forward(_random_model(variant))(fbank)
        assert y.shape == out.shape and np.isfinite(np.asarray(y)).all()


def test_relative_position_buckets_properties():
    t, nb, md = 300, 32, 128
    b = np.asarray(relative_position_buckets(t, t, nb, md))
    half, exact = nb // 2, nb // 4
    rel = np.arange(t)[None] - np.arange(t)[:, None]
    assert (b[rel == 0] == 0).all()
    np.testing.assert_array_equal(b[(rel < 0) & (rel > -exact)], -rel[(rel < 0) & (rel > -exact)])
    np.testing.assert_array_equal(b[(rel > 0) & (rel < exact)], half + rel[(rel > 0) & (rel < exact)])
    assert b[rel >= md].min() == half + half - 1 and b[rel <= -md].max() == half - 1
    assert b.max() < nb
    # Monotone in distance within each direction.
    row = b[0]
    assert (np.diff(row[1:]) >= 0).all()


@functools.partial(jax.jit, static_argnums=0)
def _run_masked(graphdef, state, fbank, valid):
    return nnx.merge(graphdef, state)(fbank, valid_frames=valid)


@pytest.mark.parametrize("conv_pos", [4, 5])
def test_zero_padded_segments_with_valid_frames_equal_the_unpadded_ones(conv_pos):
    """A task-mixed batch pads short audio: with ``valid_frames`` the real tokens are exactly the
    unpadded computation's (conv position embedding and attention never see the padding)."""
    cfg = _tiny(conv_pos=conv_pos)
    model = _random_model(cfg)
    graphdef, state = nnx.split(model)
    p, mel = cfg.input_patch_size, 16
    rng = np.random.default_rng(2)
    short, long = 3 * p, 7 * p
    fb_short = rng.standard_normal((short, mel)).astype(np.float32)
    fb_long = rng.standard_normal((long, mel)).astype(np.float32)
    padded = np.zeros((2, 2, long, mel), np.float32)
    padded[0, 0, :short], padded[0, 1], padded[1, 0] = fb_short, fb_long, fb_long  # [1, 1]: an unused slot
    valid = np.array([[short, long], [long, 0]], np.int32)
    out = np.asarray(_run_masked(graphdef, state, jnp.asarray(padded), jnp.asarray(valid)))
    alone_short = np.asarray(_run(graphdef, state, jnp.asarray(fb_short[None])))[0]
    alone_long = np.asarray(_run(graphdef, state, jnp.asarray(fb_long[None])))[0]
    n_short = cfg.num_tokens(short, mel)
    np.testing.assert_allclose(out[0, 0, :n_short], alone_short, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 1], alone_long, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1, 0], alone_long, rtol=1e-5, atol=1e-5)
    # Without the mask the padding leaks into the real tokens (so the comparison above can fail).
    unmasked = np.asarray(_run(graphdef, state, jnp.asarray(padded)))
    assert np.abs(unmasked[0, 0, :n_short] - alone_short).max() > 1e-3
    mask = np.asarray(model.token_mask(jnp.asarray(valid), long, mel))
    assert mask.shape == (2, 2, cfg.num_tokens(long, mel))
    assert mask[0, 0].sum() == n_short and mask[0, 0, :n_short].all() and mask[1, 1].all()
