"""Q-Former projectors: parity with Crab's VLProjector / ALProjector, mapping and structure."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.qformer import AudioProjector, QFormerConfig, VisualProjector
from crab_jax.models.state_dict import expected_shapes, flat_arrays, load_flat
from tests.conftest import assert_parity
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.families.crab.convert.qformer_table import al_projector_table, vl_projector_table

# kind (= the torch attribute prefix) -> (module class, checkpoint name, mapping table)
PROJECTORS = {
    "visual": (VisualProjector, "vl_projector", vl_projector_table),
    "audio": (AudioProjector, "al_projector", al_projector_table),
}


def _jitted(module, method: str = "__call__"):
    """``module.method`` as a jitted ``x -> y`` reading the module's current weights (one
    compilation per input shape; eager NNX dispatch is slow on CPU)."""
    graphdef = nnx.graphdef(module)
    run = jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x))
    return lambda x: run(nnx.state(module), x)


def _config(fixtures_dir, manifest, kind, sd) -> QFormerConfig:
    cfg = manifest["fixtures"]["qformer"]["config"]
    with open(fixtures_dir / "qformer" / "bert_config" / "config.json") as f:
        bert = json.load(f)
    return QFormerConfig.from_bert_config(
        bert,
        num_hidden_layers=cfg["num_hidden_layers"],
        encoder_width=cfg[f"encoder_width_{kind}"],
        num_query_tokens=sd[f"{kind}_query_tokens"].shape[1],
        d_model=cfg["d_model"],
        mlp_depth=cfg["depth"],
        tokens_per_frame=cfg["image_token_nums"],
        cross_attention_freq=cfg["cross_attention_freq"],
    )


def _load_projector(fixtures_dir, manifest, kind):
    cls, name, table = PROJECTORS[kind]
    sd = open_tensors(fixtures_dir / "qformer" / f"{name}.safetensors")
    module = cls(_config(fixtures_dir, manifest, kind, sd), rngs=nnx.Rngs(0))
    load_flat(module, table().to_jax(sd, expected_shapes(module), source=name))
    return module, sd, table()


@pytest.fixture(scope="module")
def projectors(fixtures_dir, manifest):
    """kind -> (module, torch state dict, table), built once. Tests must not modify them."""
    return {kind: _load_projector(fixtures_dir, manifest, kind) for kind in PROJECTORS}


@pytest.fixture(scope="module")
def audio_fns(projectors):
    """Jitted ``__call__`` / ``query_features`` / ``project`` of the fixture audio projector,
    shared so each input shape compiles once."""
    module = projectors["audio"][0]
    return {m: _jitted(module, m) for m in ("__call__", "query_features", "project")}


@pytest.fixture(scope="module")
def arrays(fixtures_dir):
    return dict(np.load(fixtures_dir / "qformer" / "qformer.npz"))


@pytest.mark.parity
def test_visual_projector_matches_original(projectors, arrays):
    module, _, _ = projectors["visual"]
    run = _jitted(module)
    assert_parity(run(jnp.asarray(arrays["visual_in"])), arrays["visual_out"], "qformer visual_out")


@pytest.mark.parity
def test_audio_projector_matches_original(audio_fns, arrays):
    run = audio_fns["__call__"]
    assert_parity(run(jnp.asarray(arrays["audio3d_in"])), arrays["audio3d_out"], "qformer audio3d_out")
    assert_parity(run(jnp.asarray(arrays["audio4d_in"])), arrays["audio4d_out"], "qformer audio4d_out")


@pytest.mark.parity
def test_audio4d_is_per_segment_qformer_then_mlp(audio_fns, arrays):
    """The original's check: a 4-D call equals the segments' Q-Former outputs, concatenated
    over time, through the MLP; which (per-token MLP) also equals the 3-D calls concatenated."""
    assert bool(arrays["audio4d_equals_per_segment_3d"])
    call, query_features, project = (audio_fns[m] for m in ("__call__", "query_features", "project"))
    x = jnp.asarray(arrays["audio4d_in"])
    whole = call(x)
    segments = range(x.shape[1])
    per_segment = jnp.concatenate([query_features(x[:, i]) for i in segments], axis=1)
    np.testing.assert_allclose(whole, project(per_segment), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(whole, jnp.concatenate([call(x[:, i]) for i in segments], axis=1),
                               rtol=1e-6, atol=1e-6)
    assert_parity(project(per_segment), arrays["audio4d_out"], "qformer audio4d per segment")


@pytest.mark.parity
@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_mapping_round_trip_is_bit_exact(projectors, manifest, kind):
    module, sd, table = projectors[kind]
    tied_groups = manifest["fixtures"]["qformer"]["shared_tensors"][PROJECTORS[kind][1]]
    # the checkpoint holds every name of each tied pair, with equal tensors
    for group in tied_groups:
        assert all(k in sd for k in group), group
        assert all(np.array_equal(sd[group[0]], sd[k]) for k in group[1:]), group
    via_numpy = table.to_torch(table.to_jax(sd))
    via_module = table.to_torch(flat_arrays(module))  # int32 position_ids go back to int64
    for back in (via_numpy, via_module):
        assert sorted(back) == sorted(sd)
        for k in sd:
            assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
    # one crab_jax parameter per tied group
    jax_keys = set(expected_shapes(module))
    assert len(table.to_jax(sd)) == len(jax_keys) == len(sd) - sum(len(g) - 1 for g in tied_groups)
    # first-name-only output (how Crab's .bin files store shared tensors) still loads
    first_only = table.to_torch(flat_arrays(module), tied_names="first")
    assert sorted(first_only) == sorted(set(sd) - {k for g in tied_groups for k in g[1:]})
    reloaded = table.to_jax(first_only, expected_shapes(module))
    assert all(np.array_equal(reloaded[k], v) for k, v in table.to_jax(sd).items())


@pytest.mark.parity
@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_mapping_rejects_bad_state_dicts(projectors, manifest, kind):
    module, sd, table = projectors[kind]
    expected = expected_shapes(module)
    last = manifest["fixtures"]["qformer"]["config"]["num_hidden_layers"] - 1

    missing = f"{kind}_Qformer.bert.encoder.layer.{last}.crossattention.self.key.weight"
    broken = dict(sd.items())
    broken.pop(missing)
    with pytest.raises(MappingError, match=rf"missing key '{missing}'"):
        table.to_jax(broken, expected)

    misshaped = f"{kind}_proj.0.weight"
    broken = dict(sd.items())
    broken[misshaped] = broken[misshaped][:, :-1]
    with pytest.raises(MappingError, match=rf"{misshaped}.*expected"):
        table.to_jax(broken, expected)

    unexpected = f"{kind}_Qformer.bert.pooler.dense.weight"
    broken = dict(sd.items())
    broken[unexpected] = np.zeros((2, 2), np.float32)
    with pytest.raises(MappingError, match=unexpected):
        table.to_jax(broken, expected)

    decoder = f"{kind}_Qformer.cls.predictions.decoder.weight"
    broken = dict(sd.items())
    broken[decoder] = broken[decoder] + 1.0
    with pytest.raises(MappingError, match=rf"tied keys .*{decoder}"):
        table.to_jax(broken, expected)


def _tiny_config(**overrides) -> QFormerConfig:
    bert = dict(hidden_size=16, num_attention_heads=2, intermediate_size=24, vocab_size=10,
                max_position_embeddings=8, layer_norm_eps=1e-12, hidden_act="gelu")
    kw = dict(num_hidden_layers=2, encoder_width=12, num_query_tokens=3, d_model=20, mlp_depth=2,
              tokens_per_frame=5)
    kw.update(overrides)
    return QFormerConfig.from_bert_config(bert, **kw)


def test_visual_tokens_per_frame_comes_from_config():
    cfg = _tiny_config()
    module = VisualProjector(cfg, rngs=nnx.Rngs(0))
    run = _jitted(module)
    frames = 3
    x = jax.random.normal(jax.random.key(1), (2, frames * cfg.tokens_per_frame, cfg.encoder_width))
    y = run(x)
    assert y.shape == (2, frames * cfg.num_query_tokens, cfg.d_model)
    n = cfg.tokens_per_frame
    # frames go through the Q-Former separately and come out in order: changing frame 1
    # changes exactly its Q output rows (one compilation, unlike per-frame calls)
    x2 = x.at[:, n:2 * n].add(1.0)
    diff = np.abs(np.asarray(run(x2) - y)).max(-1)
    q = cfg.num_query_tokens
    assert diff[:, q:2 * q].min() > 0 and diff[:, :q].max() == 0 and diff[:, 2 * q:].max() == 0
    with pytest.raises(ValueError, match="tokens_per_frame"):
        module(x[:, :-1])


def test_cross_attention_freq_and_depth_shape_the_state():
    cfg = _tiny_config(num_hidden_layers=3, cross_attention_freq=2, mlp_depth=3)
    module = AudioProjector(cfg, rngs=nnx.Rngs(0))
    keys = set(expected_shapes(module))
    cross = {k.split(".")[4] for k in keys if ".crossattention." in k}
    assert cross == {"0", "2"}
    assert {k for k in keys if k.startswith("audio_proj.")} == {
        f"audio_proj.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    # the mapping round-trips this layout too (no cross-attention in layer 1)
    table = al_projector_table()
    torch_sd = table.to_torch(flat_arrays(module))
    assert not any("layer.1.crossattention" in k for k in torch_sd)
    assert torch_sd["audio_Qformer.bert.embeddings.position_ids"].dtype == np.int64
    assert np.array_equal(torch_sd["audio_Qformer.cls.predictions.decoder.weight"],
                          torch_sd["audio_Qformer.bert.embeddings.word_embeddings.weight"])
    back = table.to_jax(torch_sd, expected_shapes(module))
    for k, v in flat_arrays(module).items():
        assert np.array_equal(back[k], v), k
    x = jax.ShapeDtypeStruct((2, 4, 7, cfg.encoder_width), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x), module, x).shape == (2, 4 * cfg.num_query_tokens, cfg.d_model)


def test_text_only_weights_do_not_affect_the_output():
    """Word/position embeddings, the text FFN and the MLM head are carried, never used."""
    cfg = _tiny_config()
    module = AudioProjector(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, cfg.encoder_width))
    run = _jitted(module)
    y = run(x)
    q = module.audio_Qformer
    q.bert.embeddings.word_embeddings.weight[...] += 1.0
    q.bert.embeddings.position_embeddings.weight[...] += 1.0
    for layer in q.bert.encoder.layer:
        layer.intermediate.dense.weight[...] += 1.0
        layer.output.dense.bias[...] += 1.0
    np.testing.assert_array_equal(run(x), y)
    q.bert.encoder.layer[0].intermediate_query.dense.bias[...] += 1.0
    assert np.abs(np.asarray(run(x) - y)).max() > 0
