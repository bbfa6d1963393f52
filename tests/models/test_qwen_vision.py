"""Qwen2.5-Omni vision encoder (+ I-LoRA) against the Crab+ fixtures and HF transformers.

Fixture side (``thinker_av``): the tiny thinker's ``visual.*`` weights and adapter, the
processor's pixel rows of the batch's images / videos, and the original's encoder outputs,
layouts (window index, cu_seqlens, rotary frequencies) and block-0 ``gate_proj`` router probe.
HF side: ``Qwen2_5OmniVisionEncoder`` from a tiny random config whose windows do NOT divide
the merge grid, called ONCE on an image and a multi-slice video together, against this port
called per patch grid on slices.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert.mapping import MappingError, MappingTable
from crab_jax.families.crab_plus.convert.vision_table import conv3d_patch, vision_rules
from crab_jax.models.ilora import ILoRAConfig, ILoRALinear
from crab_jax.models.qwen_vision import (
    QwenVisionConfig, QwenVisionEncoder, cu_seqlens, rotary_freqs, split_slices, window_index, window_segments)
from crab_jax.models.state_dict import abstract_module, expected_shapes
from tests.conftest import assert_parity
from tests.families.crab_plus.tiny_weights import fill_from_rules, tiny_thinker_state, without_adapters

KINDS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}
PREFIX = "visual."


# -- fixture side -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def av(crab_plus_fixtures_dir):
    return dict(np.load(crab_plus_fixtures_dir / "thinker_av" / "thinker_av.npz"))


@pytest.fixture(scope="module")
def fixture_cfg(crab_plus_fixtures_dir) -> QwenVisionConfig:
    with open(crab_plus_fixtures_dir / "tiny_model" / "Qwen2.5-Omni-tiny" / "config.json") as f:
        return QwenVisionConfig.from_hf(json.load(f)["thinker_config"]["vision_config"])


@pytest.fixture(scope="module")
def lora(crab_plus_manifest) -> ILoRAConfig:
    c = crab_plus_manifest["fixtures"]["thinker_av"]["config"]["lora"]
    return ILoRAConfig(r=c["r"], alpha=c["lora_alpha"], num_heads=c["lora_nums"], dropout=c["lora_dropout"],
                       targets=tuple(c["target_modules"]))


@pytest.fixture(scope="module")
def tol(crab_plus_manifest) -> float:
    tolerance = crab_plus_manifest["fixtures"]["thinker_av"]["suggested_tolerance"]
    return tolerance["suggested_atol_relative_to_max_abs_of_reference"]


@pytest.fixture(scope="module")
def state(crab_plus_fixtures_dir) -> dict:
    return tiny_thinker_state(crab_plus_fixtures_dir)


def _build(cfg: QwenVisionConfig, lora: ILoRAConfig | None) -> QwenVisionEncoder:
    """An encoder without a random init, to be filled from a state."""
    return abstract_module(lambda: QwenVisionEncoder(cfg, lora, rngs=nnx.Rngs(0)))


def _encoder(cfg: QwenVisionConfig, lora: ILoRAConfig | None, state: dict) -> QwenVisionEncoder:
    enc = _build(cfg, lora)
    fill_from_rules(enc, vision_rules(cfg, lora is not None), state if lora else without_adapters(state), PREFIX)
    enc.eval()  # LoRA dropout off, as in the fixture
    return enc


@pytest.fixture(scope="module")
def encoders(fixture_cfg, lora, state) -> dict[bool, QwenVisionEncoder]:
    """``{scan_layers: encoder}`` with the tiny thinker's vision weights + adapter."""
    return {scan: _encoder(dataclasses.replace(fixture_cfg, scan_layers=scan), lora, state) for scan in (False, True)}


@nnx.jit(static_argnums=2)
def _encode(enc, slices, grid_hw):
    return enc(slices, grid_hw)


def _items(av, kind: str) -> list[tuple[np.ndarray, tuple[int, int]]]:
    pixels, grid = KINDS[kind]
    return split_slices(av[pixels], av[grid])


def _encode_items(enc, items) -> np.ndarray:
    """HF's output rows for a call on all ``items``: one slice batch per item, concatenated."""
    return np.concatenate([np.asarray(_encode(enc, jnp.asarray(s), hw)).reshape(-1, enc.cfg.out_hidden_size)
                           for s, hw in items])


def _offsets(per_slice: list[np.ndarray], step: list[int]) -> np.ndarray:
    """Concatenates per-slice arrays, adding the running total of ``step`` (HF's batching)."""
    starts = np.concatenate([[0], np.cumsum(step)[:-1]])
    return np.concatenate([a + s for a, s in zip(per_slice, starts)])


def _hf_layouts(items, cfg: QwenVisionConfig) -> dict[str, np.ndarray]:
    """window_index, cu_window_seqlens, cu_seqlens_full, rotary freqs of HF's call on ``items``,
    assembled from the per-slice numpy layouts (each slice = one (h, w) grid)."""
    grids = [hw for s, hw in items for _ in range(len(s))]
    units = [h * w // cfg.merge_unit for h, w in grids]
    segments = [window_segments(h, w, cfg) for h, w in grids]
    windows = _offsets(segments, [int(s.max()) + 1 for s in segments])
    full = np.repeat(np.arange(len(grids)), [h * w for h, w in grids])
    return {"window_index": _offsets([window_index(h, w, cfg) for h, w in grids], units),
            "cu_window_seqlens": cu_seqlens(windows), "cu_seqlens_full": cu_seqlens(full),
            "rotary_pos_emb_freqs": np.concatenate([rotary_freqs(h, w, cfg) for h, w in grids])}


@pytest.mark.parity
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_layouts_match_fixture(av, fixture_cfg, kind):
    items = _items(av, kind)
    ours = _hf_layouts(items, fixture_cfg)
    for name in ("window_index", "cu_window_seqlens", "cu_seqlens_full"):
        np.testing.assert_array_equal(ours[name], av[f"vision_{kind}_{name}"], err_msg=f"{kind} {name}")
    # pos * inv_freq: one float32 product, so equal up to the last ulp of torch's pow.
    np.testing.assert_allclose(ours["rotary_pos_emb_freqs"], av[f"vision_{kind}_rotary_pos_emb_freqs"],
                               rtol=1e-6, atol=0)


@pytest.mark.parity
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_patch_embed_matches_fixture(av, encoders, tol, kind):
    enc = encoders[False]
    out = np.concatenate([np.asarray(enc.patch_embed(jnp.asarray(s))).reshape(-1, enc.cfg.hidden_size)
                          for s, _ in _items(av, kind)])
    assert_parity(out, av[f"vision_{kind}_patch_embed"], f"vision {kind} patch_embed", tol)


@pytest.mark.parity
@pytest.mark.slow
def test_outputs_match_fixture_scanned_and_not(av, encoders, tol):
    outs = {}
    for scan, enc in encoders.items():
        for kind in sorted(KINDS):
            outs[scan, kind] = _encode_items(enc, _items(av, kind))
            assert_parity(outs[scan, kind], av[f"vision_{kind}_out"], f"vision {kind} out scan={scan}", tol)
    assert encoders[True].blocks.mlp.gate_proj.lora_B.shape[0] == encoders[True].cfg.depth
    for kind in KINDS:  # scan vs python loop: the same ops, (near) bit-identical
        ref = outs[False, kind]
        np.testing.assert_allclose(outs[True, kind], ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    # Slices of one grid share a call whatever they belong to: images and video slices together.
    slices = [(s, hw) for kind in sorted(KINDS) for s, hw in _items(av, kind)]
    if len({hw for _, hw in slices}) == 1:
        together = np.asarray(_encode(encoders[False], jnp.asarray(np.concatenate([s for s, _ in slices])),
                                      slices[0][1])).reshape(-1, encoders[False].cfg.out_hidden_size)
        np.testing.assert_allclose(together, np.concatenate([outs[False, k] for k in sorted(KINDS)]),
                                   rtol=0, atol=1e-6 * np.abs(together).max())


@pytest.mark.parity
def test_adapters_matter(av, fixture_cfg, state, tol):
    """Negative control: the base weights alone must NOT reproduce the fixture's outputs."""
    base = _encoder(fixture_cfg, None, state)
    out = _encode_items(base, _items(av, "video"))
    ref = av["vision_video_out"]
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    print(f"negative control (no I-LoRA): rel err {err:.3e}")
    assert err > 100 * tol


class _Tap(nnx.Module):
    """Wraps an :class:`ILoRALinear` and hands its input, output and gates to ``record`` (eager only)."""

    def __init__(self, inner: ILoRALinear, record):
        self.inner, self.record = inner, record

    def __call__(self, x):
        y, gates = self.inner(x, return_gates=True)
        self.record(x=np.asarray(x), y=np.asarray(y), gates=np.asarray(gates))
        return y


@pytest.mark.parity
def test_router_probe_matches_fixture(av, fixture_cfg, lora, state, tol):
    """Block 0's ``gate_proj`` in the first vision call with that many rows (images come first)."""
    name = "vision_block0_gate_proj"
    rows = av[f"probe_in_{name}"].shape[0]
    kind = next(k for k in ("image", "video") if KINDS[k][0] in av and av[KINDS[k][0]].shape[0] == rows)
    enc = _encoder(fixture_cfg, lora, state)
    seen = []
    enc.blocks[0].mlp.gate_proj = _Tap(enc.blocks[0].mlp.gate_proj, lambda **kw: seen.append(kw))
    for s, hw in _items(av, kind):  # eager: the tap reads concrete values
        enc(jnp.asarray(s), hw)
    got = {k: np.concatenate([d[k].reshape(-1, d[k].shape[-1]) for d in seen]) for k in seen[0]}
    assert_parity(got["x"], av[f"probe_in_{name}"], f"{name} in ({kind})", tol)
    assert_parity(got["y"], av[f"probe_out_{name}"], f"{name} out ({kind})", tol)
    assert_parity(got["gates"], av[f"route_{name}"], f"{name} route ({kind})", tol)


# -- mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("with_lora", [False, True])
def test_mapping_round_trip_is_bit_exact(fixture_cfg, state, scan, with_lora):
    cfg = dataclasses.replace(fixture_cfg, scan_layers=scan)
    visual = {k: v for k, v in (state if with_lora else without_adapters(state)).items() if k.startswith(PREFIX)}
    table = MappingTable("qwen_vision", vision_rules(cfg, with_lora))
    flat = table.to_jax(visual)
    if scan:
        assert flat["visual.blocks.attn.q.weight"].shape[0] == cfg.depth
    if with_lora:
        assert flat[f"visual.blocks.{'' if scan else '0.'}mlp.down_proj.lora_B"].ndim == 3 + scan
    back = table.to_torch(flat)
    assert sorted(back) == sorted(visual)
    for k, v in visual.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_conv3d_patch_transform(fixture_cfg):
    rng = np.random.default_rng(0)
    c = fixture_cfg
    w = rng.standard_normal((c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size),
                            dtype=np.float32)
    t = conv3d_patch(c)
    jw = t.to_jax(w)
    assert jw.shape == (c.patch_dim, c.hidden_size)
    # Column order of a pixel row is (C, T, p, p): the Conv3d is this matmul.
    x = rng.standard_normal((5, c.patch_dim), dtype=np.float32)
    conv = np.einsum("nctij,octij->no", x.reshape(5, *w.shape[1:]), w)
    np.testing.assert_allclose(x @ jw, conv, rtol=0, atol=1e-5 * np.abs(conv).max())
    assert np.array_equal(t.to_torch(jw), w)


def test_missing_adapter_key_is_reported(fixture_cfg, lora, state):
    enc = _build(fixture_cfg, lora)
    dropped = "visual.blocks.0.mlp.up_proj.lora_route.weight"
    with pytest.raises(MappingError, match="lora_route"):
        fill_from_rules(enc, vision_rules(fixture_cfg, True), {k: v for k, v in state.items() if k != dropped}, PREFIX)
    with pytest.raises(MappingError, match="unexpected key"):  # adapter keys into a model without I-LoRA
        fill_from_rules(_build(fixture_cfg, None), vision_rules(fixture_cfg, False),
                        state, PREFIX)


# -- HF reference -------------------------------------------------------------------------------

# Windows of 3 merge units (window_size // merge // patch): they divide neither side of a 5 x 7
# merge grid (partial windows) and both sides of 6 x 3 (full empty pad windows vanish).
HF_TINY = dict(depth=3, hidden_size=32, intermediate_size=40, num_heads=4, in_channels=3, patch_size=6,
               spatial_merge_size=2, temporal_patch_size=2, window_size=36, fullatt_block_indexes=[0, 2],
               out_hidden_size=24, hidden_act="silu")
HF_GRIDS = ((1, 10, 14), (3, 12, 6))  # an image, then a 3-slice video


@pytest.fixture(scope="module")
def hf_case():
    """``(hf_config dict, torch state, pixel rows, grid_thw, HF output)``."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniVisionEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniVisionEncoder

    hf_cfg = Qwen2_5OmniVisionEncoderConfig(**HF_TINY, attn_implementation="eager")
    torch.manual_seed(0)
    model = Qwen2_5OmniVisionEncoder(hf_cfg).eval()
    assert model.config._attn_implementation == "eager"
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # O(1) weights: peaky attention, so a wrong mask or rotary shows
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("ln_q.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / np.prod(p.shape[1:]) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    grid = np.asarray(HF_GRIDS, np.int64)
    pixels = np.random.default_rng(2).standard_normal((int(grid.prod(-1).sum()), 3 * 2 * 6 * 6), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.tensor(pixels), grid_thw=torch.tensor(grid)).numpy()
    state = {PREFIX + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return hf_cfg.to_dict(), state, pixels, grid, out


def _hf_encoder(hf_case, **options) -> QwenVisionEncoder:
    hf_cfg, state = hf_case[:2]
    cfg = QwenVisionConfig.from_hf(hf_cfg, **options)
    enc = _build(cfg, None)
    fill_from_rules(enc, vision_rules(cfg, False), state, PREFIX)
    return enc


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "dots")])
def test_slices_match_hf_concatenated_call(hf_case, scan, remat):
    _, _, pixels, grid, ref = hf_case
    enc = _hf_encoder(hf_case, scan_layers=scan, remat=remat)
    out = _encode_items(enc, split_slices(pixels, grid))
    assert_parity(out, ref, f"vision vs HF (image + 3-slice video) scan={scan} remat={remat}", 1e-5)


@pytest.mark.parity
def test_full_attention_everywhere_does_not_match_hf(hf_case):
    """Negative control: dropping the windows (every block full) must NOT match HF."""
    _, _, pixels, grid, ref = hf_case
    enc = _hf_encoder(hf_case, fullatt_block_indexes=tuple(range(HF_TINY["depth"])))
    err = float(np.abs(_encode_items(enc, split_slices(pixels, grid)) - ref).max() / np.abs(ref).max())
    print(f"negative control (full attention everywhere): rel err {err:.3e}")
    assert err > 1e-3


@pytest.mark.parametrize("window_size", [36, 48, 84])
def test_layouts_match_hf_get_window_index(window_size):
    """Other windows (84 px at patch 14 is the hidden fixture's 3 x 3 units) on several grids."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniVisionEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniVisionEncoder

    sizes = dict(HF_TINY, depth=1, patch_size=14 if window_size == 84 else 6, window_size=window_size,
                 fullatt_block_indexes=[0])
    model = Qwen2_5OmniVisionEncoder(Qwen2_5OmniVisionEncoderConfig(**sizes))
    cfg = QwenVisionConfig.from_hf(sizes)
    grid = np.asarray([(2, 16, 16), (1, 10, 14), (3, 12, 6), (1, 2, 2)], np.int64)
    index, cu = model.get_window_index(torch.tensor(grid))
    items = [(np.zeros((t, h * w, 1)), (h, w)) for t, h, w in grid.tolist()]
    ours = _hf_layouts(items, cfg)
    np.testing.assert_array_equal(ours["window_index"], index.numpy())
    np.testing.assert_array_equal(ours["cu_window_seqlens"], torch.unique_consecutive(torch.tensor(cu)).numpy())
    np.testing.assert_allclose(ours["rotary_pos_emb_freqs"], model.rot_pos_emb(torch.tensor(grid)).numpy(),
                               rtol=1e-6, atol=0)


def test_config_from_hf_and_scanned_shapes(fixture_cfg, lora):
    assert fixture_cfg.window_units >= 1 and isinstance(fixture_cfg.fullatt_block_indexes, tuple)
    cfg = dataclasses.replace(fixture_cfg, scan_layers=True)
    abstract = _build(cfg, lora)
    shapes = {k: shape for k, (shape, _) in expected_shapes(abstract).items()}
    d, e = cfg.depth, cfg.hidden_size
    assert shapes["blocks.attn.q.weight"] == (d, e, e)
    assert shapes["blocks.mlp.gate_proj.lora_B"] == (d, lora.num_heads, lora.r, cfg.intermediate_size)
    assert shapes["patch_embed.proj.weight"] == (cfg.patch_dim, e)
    assert shapes["merger.mlp.0.weight"] == (e * cfg.merge_unit,) * 2
    with pytest.raises(ValueError, match="remat"):
        dataclasses.replace(cfg, remat="bogus")
