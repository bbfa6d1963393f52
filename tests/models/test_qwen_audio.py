"""Qwen2.5-Omni audio encoder: Crab+ fixture parity (thinker_av), HF reference, layout, mapping."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert.mapping import MappingTable
from crab_jax.families.crab_plus.convert.audio_table import audio_rules
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.layers import Linear
from crab_jax.models.qwen_audio import (
    QwenAudioConfig, QwenAudioEncoder, audio_chunks, audio_lengths, audio_token_count, conv_output_frames,
    pack_audio, valid_rows)
from crab_jax.models.state_dict import abstract_module, flat_arrays
from tests.conftest import assert_parity
from tests.families.crab_plus.tiny_weights import fill_from_rules, tiny_thinker_state, without_adapters

PREFIX = "audio_tower."
# Extra slots beyond what the fixture's clips need: padded slots must not disturb valid ones.
SPARE_CHUNKS, SPARE_TOKENS = 2, 3


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture(crab_plus_fixtures_dir, crab_plus_manifest):
    """Config, I-LoRA config, thinker state, the thinker_av arrays and the tolerance."""
    with open(crab_plus_fixtures_dir / "tiny_model" / "Qwen2.5-Omni-tiny" / "config.json") as f:
        thinker = json.load(f)["thinker_config"]
    entry = crab_plus_manifest["fixtures"]["thinker_av"]
    lo = entry["config"]["lora"]
    lora = ILoRAConfig(r=lo["r"], alpha=float(lo["lora_alpha"]), num_heads=lo["lora_nums"],
                       dropout=lo["lora_dropout"], targets=tuple(lo["target_modules"]))
    arrays = dict(np.load(crab_plus_fixtures_dir / "thinker_av" / "thinker_av.npz"))
    return dict(cfg=QwenAudioConfig.from_hf(thinker["audio_config"]), lora=lora,
                state=tiny_thinker_state(crab_plus_fixtures_dir), arrays=arrays,
                tol=entry["suggested_tolerance"]["suggested_atol_relative_to_max_abs_of_reference"])


def _abstract(cfg, lora):
    """The model's structure without a random init (RNG streams get concrete keys)."""
    return abstract_module(lambda: QwenAudioEncoder(cfg, lora, rngs=nnx.Rngs(0)))


def _model(cfg, lora, state):
    model = _abstract(cfg, lora)
    fill_from_rules(model, audio_rules(cfg, lora is not None), state, PREFIX)
    model.eval()  # LoRA dropout off, as the fixtures ran
    return model


@pytest.fixture(scope="module")
def model(fixture):
    return _model(fixture["cfg"], fixture["lora"], fixture["state"])


def _clips(arrays):
    """``(features [mel, T], L)`` per clip; the feature mask must be a prefix (only it enters)."""
    mask = arrays["feature_attention_mask"].astype(bool)
    lens = mask.sum(1)
    for m, n in zip(mask, lens):
        assert m[:n].all() and not m[n:].any(), "feature_attention_mask is not a prefix"
    return [(f, int(n)) for f, n in zip(arrays["input_features"], lens)]


def _pack(clips, n_window, spare_chunks=SPARE_CHUNKS, spare_tokens=SPARE_TOKENS):
    chunks = sum(len(audio_chunks(f, n, n_window)[1]) for f, n in clips)
    tokens = sum(audio_token_count(n) for _, n in clips)
    return pack_audio(clips, n_window, chunks + spare_chunks, tokens + spare_tokens)


@pytest.fixture(scope="module")
def packed(fixture):
    return _pack(_clips(fixture["arrays"]), fixture["cfg"].n_window)


def _jit(model, method):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, *args):
        return getattr(nnx.merge(graphdef, state), method)(*args)

    return lambda *args: run(state, *(jnp.asarray(a) for a in args))


def _inputs(p):
    return p["chunks"], p["chunk_frames"], p["pool_index"]


# -- layout (exact) ---------------------------------------------------------------------------


def test_lengths_and_cu_seqlens_follow_from_the_chunk_layout(fixture, packed):
    a, cfg = fixture["arrays"], fixture["cfg"]
    lens = np.array([n for _, n in _clips(a)])
    np.testing.assert_array_equal(lens, a["audio_feature_lens"])
    after, tokens = audio_lengths(lens)
    np.testing.assert_array_equal(after, a["audio_aftercnn_lens"])
    assert int(tokens.sum()) == a["audio_out"].shape[0]
    frames = packed["chunk_frames"]
    used = frames[frames > 0]
    assert (frames[len(used):] == 0).all(), "used chunk slots come first"
    cu = np.concatenate([[0], np.cumsum(conv_output_frames(used))])
    print(f"chunks {used.tolist()} -> cu_seqlens {cu.tolist()}")
    np.testing.assert_array_equal(cu, a["audio_cu_seqlens"])
    assert len(valid_rows(frames, cfg.n_window)) == a["audio_layer0_in"].shape[0]
    np.testing.assert_array_equal(np.bincount(packed["clip_of_token"][packed["token_valid"]]), tokens)


def test_audio_chunks_tail_and_packing_errors():
    mel, w = 5, 3
    feats = np.arange(mel * 20, dtype=np.float32).reshape(mel, 20)
    chunks, frames = audio_chunks(feats, 13, w)
    assert frames.tolist() == [6, 6, 1] and chunks.shape == (3, 6, mel)
    np.testing.assert_array_equal(chunks.reshape(-1, mel)[:13], feats[:, :13].T)
    assert not chunks.reshape(-1, mel)[13:].any(), "frames past the clip must not enter"
    assert audio_token_count(13) == 3 and audio_token_count(1) == 0
    clips = [(feats, 13), (feats, 7)]
    with pytest.raises(ValueError, match="chunk slots"):
        pack_audio(clips, w, 4, 10)
    with pytest.raises(ValueError, match="token slots"):
        pack_audio(clips, w, 5, 4)
    p = pack_audio(clips, w, 5, 5)
    # W = 3 is odd: clip 0's second pair takes the last frame of chunk 0 and the first of chunk 1.
    assert p["pool_index"][:5].tolist() == [[0, 1], [2, 3], [4, 5], [9, 10], [11, 12]]
    assert p["clip_of_token"].tolist() == [0, 0, 0, 1, 1] and p["token_valid"].all()


# -- fixture parity ---------------------------------------------------------------------------


@pytest.mark.parity
def test_fixture_layer0_input_and_output(fixture, model, packed):
    a, cfg, tol = fixture["arrays"], fixture["cfg"], fixture["tol"]
    h0 = _jit(model, "embed")(packed["chunks"], packed["chunk_frames"])
    rows = valid_rows(packed["chunk_frames"], cfg.n_window)
    assert_parity(np.asarray(h0).reshape(-1, cfg.d_model)[rows], a["audio_layer0_in"], "audio_layer0_in", tol)
    out = np.asarray(_jit(model, "__call__")(*_inputs(packed)))
    assert np.isfinite(out).all(), "padded token slots must be finite"
    assert_parity(out[packed["token_valid"]], a["audio_out"], "audio_out", tol)


@pytest.mark.parity
def test_fixture_layer0_k_proj_router_probe(fixture, model, packed):
    a, cfg, tol = fixture["arrays"], fixture["cfg"], fixture["tol"]
    layer = model.layers[0]

    @jax.jit
    def probe(h0):
        x = layer.self_attn_layer_norm(h0)
        y, gates = layer.self_attn.k_proj(x, return_gates=True)
        return x, y, gates, Linear.__call__(layer.self_attn.k_proj, x)

    h0 = _jit(model, "embed")(packed["chunks"], packed["chunk_frames"]).reshape(-1, cfg.d_model)
    rows = valid_rows(packed["chunk_frames"], cfg.n_window)
    x, y, gates, frozen = (np.asarray(t)[rows] for t in probe(h0))
    assert_parity(x, a["probe_in_audio_layer0_k_proj"], "probe_in_audio_layer0_k_proj", tol)
    assert_parity(y, a["probe_out_audio_layer0_k_proj"], "probe_out_audio_layer0_k_proj", tol)
    assert_parity(gates, a["route_audio_layer0_k_proj"], "route_audio_layer0_k_proj", tol)
    # Negative control: the frozen part alone must not match (the adapter is loaded and counts).
    ref = a["probe_out_audio_layer0_k_proj"]
    assert np.abs(frozen - ref).max() > 10 * tol * np.abs(ref).max()


@pytest.mark.parity
def test_attention_across_chunks_does_not_match(fixture, model, packed):
    """Negative control: the same layers with every valid frame of the batch in one sequence."""
    a, tol = fixture["arrays"], fixture["tol"]

    @jax.jit
    def unchunked(chunks, frames, pool_index):
        h = model.embed(chunks, frames)
        n, w, d = h.shape
        h = model.encode(h.reshape(1, n * w, d), model.frame_valid(frames).reshape(1, n * w))
        return model.pool(h.reshape(n, w, d), pool_index)

    out = np.asarray(unchunked(*(jnp.asarray(x) for x in _inputs(packed))))[packed["token_valid"]]
    ref = a["audio_out"]
    err = np.abs(out - ref).max() / np.abs(ref).max()
    print(f"cross-chunk attention: error {err:.3e} (tolerance {tol:.1e})")
    assert err > 10 * tol


@pytest.mark.parity
def test_scan_layers_equals_loop_and_mapping_round_trips(fixture, model, packed):
    cfg, lora, state = fixture["cfg"], fixture["lora"], fixture["state"]
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True, remat="full")  # remat: same forward
    scanned = _model(scanned_cfg, lora, state)
    assert flat_arrays(scanned)["layers.self_attn.k_proj.lora_B"].shape[0] == cfg.encoder_layers
    np.testing.assert_allclose(_jit(scanned, "__call__")(*_inputs(packed)),
                               _jit(model, "__call__")(*_inputs(packed)), rtol=1e-6, atol=1e-6)
    subset = {k: v for k, v in state.items() if k.startswith(PREFIX)}
    for c, m in ((cfg, model), (scanned_cfg, scanned)):
        table = MappingTable("audio", audio_rules(c, True))
        back = table.to_torch({PREFIX + k: v for k, v in flat_arrays(m).items()})
        assert sorted(back) == sorted(subset)
        for k, v in subset.items():
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_base_only_table_refuses_adapter_keys(fixture):
    cfg, state = fixture["cfg"], fixture["state"]
    model = _abstract(cfg, None)
    fill_from_rules(model, audio_rules(cfg, False), without_adapters(state), PREFIX)
    with pytest.raises(ValueError, match="lora"):
        fill_from_rules(model, audio_rules(cfg, False), state, PREFIX)


# -- HF transformers reference ----------------------------------------------------------------

# Odd n_window (pairs cross chunk boundaries), clip lengths giving 1-frame tail chunks.
HF_SIZES = dict(num_mel_bins=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=24, d_model=16,
                max_source_positions=64, n_window=3, output_dim=20, activation_function="gelu")
HF_LENGTHS = (13, 7, 19, 4)


@pytest.mark.slow
@pytest.mark.parity
def test_matches_hf_audio_encoder(fixture):
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    torch.manual_seed(0)
    hf_cfg = Qwen2_5OmniAudioEncoderConfig(**HF_SIZES)
    hf_cfg._attn_implementation = "eager"
    hf = Qwen2_5OmniAudioEncoder(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {PREFIX + k: v.numpy() for k, v in hf.state_dict().items()}
    cfg = QwenAudioConfig.from_hf(hf_cfg.to_dict())
    assert cfg.n_window % 2 and all(n % (2 * cfg.n_window) == 1 for n in HF_LENGTHS[:3])

    rng = np.random.default_rng(0)
    # Frames past each clip hold large garbage: only the valid ones may enter.
    clips = [(np.where(np.arange(n + 5) < n, rng.normal(size=(cfg.num_mel_bins, n + 5)), 1e3).astype(np.float32), n)
             for n in HF_LENGTHS]
    lens = torch.tensor(HF_LENGTHS)
    after, tokens = hf._get_feat_extract_output_lengths(lens)
    with torch.no_grad():
        ref = hf(torch.from_numpy(np.concatenate([f[:, :n] for f, n in clips], axis=1)),
                 feature_lens=lens, aftercnn_lens=after).last_hidden_state.numpy()
    assert ref.shape[0] == int(tokens.sum()) == sum(audio_token_count(n) for n in HF_LENGTHS)

    model = _abstract(cfg, None)
    fill_from_rules(model, audio_rules(cfg, False), state, PREFIX)
    p = _pack(clips, cfg.n_window)
    out = np.asarray(_jit(model, "__call__")(*_inputs(p)))
    assert np.isfinite(out).all()
    assert_parity(out[p["token_valid"]], ref, "hf_audio_encoder_out", fixture["tol"])
    # Negative control: a pool that never crosses a chunk boundary (as a per-chunk reshape
    # would) must not match for odd n_window; here such a pair keeps only its first frame.
    within = p["pool_index"].copy()
    crosses = (within[:, 0] // cfg.n_window != within[:, 1] // cfg.n_window) & p["token_valid"]
    assert crosses.any()
    within[crosses, 1] = within[crosses, 0]
    wrong = np.asarray(_jit(model, "__call__")(p["chunks"], p["chunk_frames"], within))
    assert np.abs(wrong[p["token_valid"]] - ref).max() > 10 * fixture["tol"] * np.abs(ref).max()
