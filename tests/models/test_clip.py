"""CLIP vision tower: parity with HF ``CLIPVisionModel`` and with the original Crab (crab_full)."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from crab_jax.models.clip import (
    ClipEncoderConfig,
    ClipVisionConfig,
    ClipVisionTower,
    ClipVisualEncoder,
)
from crab_jax.families.crab.model import SEG_TASKS
from crab_jax.models.state_dict import abstract_module, expected_shapes, flat_arrays, load_flat
from tests.conftest import assert_parity
from crab_jax.families.crab.convert.clip_table import clip_table, clip_vision_to_jax, split_clip_vision_keys
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.convert.mapping import MappingError

transformers = pytest.importorskip("transformers")

TINY_HF_VISION = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                      image_size=28, patch_size=7, layer_norm_eps=1e-5, hidden_act="quick_gelu")


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """HF init leaves LayerNorms at 1/0 and biases at 0; draw everything so no term is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 0:  # CLIPModel's logit_scale
                continue
            noise = torch.randn(p.shape, generator=g)
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(noise * (0.5 if p.ndim == 1 else 1.0 / np.sqrt(max(p[0].numel(), 1))))


def _hf_tiny_vision(seed=0):
    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(**TINY_HF_VISION, attn_implementation="eager")
    model = transformers.CLIPVisionModel(config).eval()
    assert model.config._attn_implementation == "eager"
    _randomize(model, seed)
    return model


def _numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _tower_from_state(state, cfg: ClipVisionConfig) -> ClipVisionTower:
    tower = abstract_module(lambda: ClipVisionTower(cfg, rngs=nnx.Rngs(0)))
    flat, _ = clip_vision_to_jax(state, cfg, expected_shapes(tower))  # raises on any key problem
    load_flat(tower, flat)
    return tower


def _fixture_tower(fixtures_dir):
    folder = fixtures_dir / "crab_full" / "clip_vision"
    with open(folder / "config.json") as f:
        cfg = ClipVisionConfig.from_hf(json.load(f))
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    assert len(files) == 1, f"expected one CLIP weight file in {folder}, found {files}"
    state = open_tensors(files[0])
    return _tower_from_state(state, cfg), cfg, state


@pytest.fixture(scope="module")
def hf_tiny():
    model = _hf_tiny_vision()
    cfg = ClipVisionConfig.from_hf(model.config.to_dict())
    return model, cfg, _tower_from_state(_numpy_state(model), cfg)


# -- (a) HF CLIPVisionModel, tiny random config ------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("select_layers", [(0,), (1, 3), (3,), (-1, 0, 2), (2, 1), (-2,)])
def test_hidden_states_match_hf(hf_tiny, select_layers):
    model, cfg, tower = hf_tiny
    pixels = np.random.default_rng(1).normal(size=(2, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    with torch.no_grad():
        hidden = model(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
    assert len(hidden) == cfg.num_hidden_layers + 1
    got = tower(jnp.asarray(pixels), select_layers)
    assert got.shape == (len(select_layers), 2, cfg.num_patches, cfg.hidden_size)
    for i, k in enumerate(select_layers):
        assert_parity(got[i], hidden[k][:, 1:].numpy(), f"clip tiny hidden_states[{k}] patch")
    with_cls = tower(jnp.asarray(pixels), select_layers, "cls_patch")
    for i, k in enumerate(select_layers):
        assert_parity(with_cls[i], hidden[k].numpy(), f"clip tiny hidden_states[{k}] cls_patch")


def test_layers_past_deepest_tap_are_not_run(hf_tiny):
    _, cfg, tower = hf_tiny
    pixels = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, cfg.image_size, cfg.image_size)),
                         jnp.float32)
    last = tower.vision_model.encoder.layers[cfg.num_hidden_layers - 1]
    saved = last.mlp.fc1.weight[...]
    try:
        last.mlp.fc1.weight[...] = jnp.full_like(saved, jnp.nan)
        assert bool(jnp.isfinite(tower(pixels, (0, cfg.num_hidden_layers - 1))).all())
        assert not bool(jnp.isfinite(tower(pixels, (cfg.num_hidden_layers,))).all())
    finally:
        last.mlp.fc1.weight[...] = saved


def test_rejects_bad_select_arguments(hf_tiny):
    _, cfg, tower = hf_tiny
    pixels = jnp.zeros((1, 3, cfg.image_size, cfg.image_size))
    with pytest.raises(ValueError, match="out of range"):
        tower(pixels, (cfg.num_hidden_layers + 1,))
    with pytest.raises(ValueError, match="select_feature"):
        tower(pixels, (1,), "cls")
    with pytest.raises(ValueError, match="image size"):
        tower(jnp.zeros((1, 3, cfg.image_size + cfg.patch_size, cfg.image_size)), (1,))


def test_visual_encoder_wrapper_regroups_frames(hf_tiny):
    """Crab's VisualEncoder: [b, t, C, H, W] -> per tap [b, t*P, W], frame after frame."""
    _, cfg, tower = hf_tiny
    taps = (2, 1)
    encoder = abstract_module(lambda: ClipVisualEncoder(ClipEncoderConfig(vision=cfg, select_layer_list=taps),
                                                       rngs=nnx.Rngs(0)))
    load_flat(encoder.vision_tower, flat_arrays(tower))
    b, t = 1, 2  # 2 frames: the same shapes as the other tiny-model tests (cached op compiles)
    video = jnp.asarray(np.random.default_rng(3).normal(size=(b, t, 3, cfg.image_size, cfg.image_size)),
                        jnp.float32)
    out = encoder(video)
    assert out.shape == (len(taps), b, t * cfg.num_patches, cfg.hidden_size)
    per_frame = tower(video[0], taps)
    np.testing.assert_allclose(out[:, 0].reshape(len(taps), t, cfg.num_patches, -1), per_frame,
                               rtol=1e-6, atol=1e-6)


# -- (b) the original Crab's CLIP taps (crab_full) ---------------------------------------------
def _visual_samples(arrays) -> list[tuple[int, str]]:
    """(sample index, pixel key) of every sample with video/image, in call order."""
    samples = sorted(int(m.group(1)) for k in arrays.files if (m := re.fullmatch(r"s(\d+)_input_ids", k)))
    out = []
    for i in samples:
        keys = [f"s{i}_{kind}_pixel_values" for kind in ("video", "image") if f"s{i}_{kind}_pixel_values" in arrays.files]
        assert len(keys) <= 1, f"sample {i} has both video and image pixels"
        out += [(i, keys[0])] if keys else []
    return out


@pytest.fixture(scope="module")
def crab_clip(fixtures_dir, manifest):
    """The fixture's tower, its taps, and the taps of every visual sample's first frame."""
    tower, cfg, state = _fixture_tower(fixtures_dir)
    taps = tuple(manifest["fixtures"]["crab_full"]["config"]["select_layer_list"])
    arrays = np.load(fixtures_dir / "crab_full" / "crab_full.npz")
    visual = _visual_samples(arrays)
    first_frames = np.stack([arrays[key][0] for _, key in visual])  # [calls, 3, H, W]
    features = np.asarray(tower(jnp.asarray(first_frames), taps))  # [taps, calls, P, W]
    return dict(tower=tower, cfg=cfg, state=state, taps=taps, arrays=arrays, visual=visual,
                first_frames=first_frames, features=features)


@pytest.mark.parity
def test_last_tap_matches_original_crab(crab_clip):
    arrays, visual, features = crab_clip["arrays"], crab_clip["visual"], crab_clip["features"]
    calls = sorted(int(m.group(1)) for k in arrays.files
                   if (m := re.fullmatch(r"enc_video_call(\d+)_vit_last_selected_frame0", k)))
    assert calls == list(range(len(visual))), "one visual encoder call per sample with video/image"
    for j, (i, key) in enumerate(visual):
        assert_parity(features[-1, j], arrays[f"enc_video_call{j}_vit_last_selected_frame0"],
                      f"clip last tap, call {j} ({key} frame 0)")


@pytest.mark.parity
def test_segmentation_taps_match_original_crab(crab_clip):
    """The segmentation branch gets taps 0 and 1 of each segmentation sample's first frame."""
    arrays, visual, features = crab_clip["arrays"], crab_clip["visual"], crab_clip["features"]
    tasks = [str(t) for t in arrays["task_names"]]
    by_sample = {i: j for j, (i, _) in enumerate(visual)}
    scales = sorted(int(m.group(1)) for k in arrays.files
                    if (m := re.fullmatch(r"avs_multi_scale_image_features_(\d+)", k)))
    assert scales and len(scales) <= len(crab_clip["taps"])
    for scale in scales:
        ref = arrays[f"avs_multi_scale_image_features_{scale}"]
        for i, task in enumerate(tasks):
            if task in SEG_TASKS:  # the tasks whose frames feed the mask decoder
                assert_parity(features[scale, by_sample[i]], ref[i], f"clip tap {scale}, sample {i} ({task})")
            else:
                assert not ref[i].any()


@pytest.mark.parity
def test_all_taps_match_hf_on_fixture_checkpoint(fixtures_dir, crab_clip):
    """The fixture holds only the last tap; HF's model from the same folder checks every one."""
    model = transformers.CLIPVisionModel.from_pretrained(
        fixtures_dir / "crab_full" / "clip_vision", attn_implementation="eager").eval()
    with torch.no_grad():
        hidden = model(torch.from_numpy(crab_clip["first_frames"]), output_hidden_states=True).hidden_states
    for i, k in enumerate(crab_clip["taps"]):
        assert_parity(crab_clip["features"][i], hidden[k][:, 1:].numpy(), f"clip fixture hidden_states[{k}]")


# -- (c) mapping round trips ---------------------------------------------------------------------
def _assert_round_trip(state, cfg):
    tower = _tower_from_state(state, cfg)
    back = clip_table(cfg).to_torch(flat_arrays(tower))
    assert sorted(back) == sorted(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and np.array_equal(back[k], state[k]), k


@pytest.mark.parity
def test_round_trip_fixture_checkpoint(crab_clip):
    _assert_round_trip(crab_clip["state"], crab_clip["cfg"])


def test_round_trip_hf_tiny(hf_tiny):
    model, cfg, _ = hf_tiny
    _assert_round_trip(_numpy_state(model), cfg)


def test_full_clip_model_checkpoint():
    """A full CLIPModel (the released openai checkpoint's format): text keys are reported
    as ignored, the vision half loads and matches ``CLIPModel.vision_model``."""
    torch.manual_seed(0)
    text = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=12)
    config = transformers.CLIPConfig(text_config=text, vision_config=TINY_HF_VISION, projection_dim=8)
    model = transformers.CLIPModel(config).eval()
    assert model.config.vision_config.hidden_size == TINY_HF_VISION["hidden_size"]
    _randomize(model, 1)
    state = _numpy_state(model)
    state["vision_model.embeddings.position_ids"] = np.arange(17)[None]  # as older exports stored it
    vision_keys, ignored = split_clip_vision_keys(state)
    assert any(k.startswith("text_model.") for k in ignored)
    assert all(r == "ignored: text tower" for k, r in ignored.items() if k.startswith("text_model."))
    assert {"text_projection.weight", "visual_projection.weight", "logit_scale",
            "vision_model.embeddings.position_ids"} <= set(ignored)
    assert set(vision_keys) | set(ignored) == set(state) and not set(vision_keys) & set(ignored)

    cfg = ClipVisionConfig.from_hf(config.to_dict())
    assert cfg.hidden_size == TINY_HF_VISION["hidden_size"]
    tower = _tower_from_state(state, cfg)
    pixels = np.random.default_rng(4).normal(size=(2, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    with torch.no_grad():
        hidden = model.vision_model(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
    got = tower(jnp.asarray(pixels), (1, cfg.num_hidden_layers))
    assert_parity(got[1], hidden[-1][:, 1:].numpy(), "clip from CLIPModel checkpoint, last layer")

    # Without the split, the text tower is an error that names the key, not a silent drop.
    with pytest.raises(MappingError, match=r"text_model\.embeddings"):
        clip_table(cfg).to_jax(state, expected_shapes(tower))


# -- (d) broken checkpoints ---------------------------------------------------------------------
@pytest.mark.parity
def test_missing_and_misshaped_keys_are_named(crab_clip):
    tower, cfg, state = crab_clip["tower"], crab_clip["cfg"], crab_clip["state"]
    last = cfg.num_hidden_layers - 1
    missing = f"vision_model.encoder.layers.{last}.mlp.fc1.weight"
    broken = dict(state.items())
    broken.pop(missing)
    with pytest.raises(MappingError, match=re.escape(missing)):
        clip_vision_to_jax(broken, cfg, expected_shapes(tower))

    broken = dict(state.items())
    broken["vision_model.embeddings.position_embedding.weight"] = broken[
        "vision_model.embeddings.position_embedding.weight"][:-1]
    with pytest.raises(MappingError, match=r"position_embedding.*expected"):
        clip_vision_to_jax(broken, cfg, expected_shapes(tower))

    extra = f"vision_model.encoder.layers.{cfg.num_hidden_layers}.mlp.fc1.weight"
    broken = dict(state.items())
    broken[extra] = state[missing]
    with pytest.raises(MappingError, match=re.escape(extra)):
        clip_vision_to_jax(broken, cfg, expected_shapes(tower))


# -- (e) jit -------------------------------------------------------------------------------------
def test_forward_compiles_once_per_shape_and_taps(hf_tiny):
    _, cfg, tower = hf_tiny
    traces = []

    @nnx.jit(static_argnames="select_layers")
    def forward(module, pixels, select_layers):
        traces.append(select_layers)
        return module(pixels, select_layers)

    rng = np.random.default_rng(5)
    shape = (2, 3, cfg.image_size, cfg.image_size)
    outs = [forward(tower, jnp.asarray(rng.normal(size=shape), jnp.float32), (1, 2)) for _ in range(3)]
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[1])  # really recomputed on new pixels
    forward(tower, jnp.asarray(rng.normal(size=shape), jnp.float32), (0, 2))
    assert len(traces) == 2


def test_config_from_hf_rejects_other_models():
    with pytest.raises(ValueError, match="model_type"):
        ClipVisionConfig.from_hf({"model_type": "siglip_vision_model", "hidden_size": 8})
