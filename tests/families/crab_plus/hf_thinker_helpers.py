"""HF transformers' ``Qwen2_5OmniThinkerForConditionalGeneration`` as a second reference for
:class:`~crab_jax.families.crab_plus.model.CrabPlusThinker`.

* :func:`hf_thinker`: the torch thinker from a tiny random config (eager attention, O(1)
  weights so attention is peaky and a wrong rotary or mask shows), and its config dict;
* :func:`crab_thinker`: the crab_jax thinker filled from that torch state dict through the
  family's converter table (``thinker.`` + the HF thinker's keys), optionally with another
  ``mrope_section`` (the negative control);
* :func:`processor_inputs`: processor-format numpy inputs (``input_ids`` with the
  placeholder runs, random pixel rows with their grids, random log-mel features with a
  ``feature_attention_mask``) from a per-sample segment list, padded left or right;
* :func:`hf_logits` / :func:`hf_rope_index` / :func:`crab_forward`: both sides on those inputs
  (:func:`common_slots`: one static bucket for every batch, so crab_jax compiles once).

Every size comes from :data:`HF_SIZES` (the one place the tiny shapes live).
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.families.crab_plus.convert.thinker_table import HF_PREFIX, thinker_table
from crab_jax.families.crab_plus.hf_config import thinker_config_from_hf
from crab_jax.families.crab_plus.layout import thinker_batch
from crab_jax.families.crab_plus.model import CrabPlusConfig, CrabPlusThinker
from crab_jax.models.qwen_audio import audio_token_count
from crab_jax.models.state_dict import abstract_module, expected_shapes, load_flat

# Token ids: text ids are drawn from [0, FIRST_SPECIAL); the specials sit above.
FIRST_SPECIAL = 500
TOKENS = dict(pad_token_id=500, eos_token_id=501, audio_token_index=502, image_token_index=503,
              video_token_index=504, audio_start_token_id=505, audio_end_token_id=506,
              vision_start_token_id=507, vision_end_token_id=508)
# head_dim 16 -> mrope_section sums to 8; the three streams get different widths so a permuted split differs.
HF_SIZES = dict(
    text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                     max_position_embeddings=4096, tie_word_embeddings=False,
                     rope_scaling={"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"}),
    # 8 x 8 patch grid per frame pair (frame_size 32): 16 LLM tokens per temporal slice;
    # 24 px windows = 3 merge units, which do not divide the 4 x 4 merge grid (padded windows).
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, in_channels=3, patch_size=4,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=24, fullatt_block_indexes=[1],
                       out_hidden_size=64, hidden_act="silu"),
    # odd n_window: pooled pairs cross chunk boundaries.
    audio_config=dict(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=48,
                      max_source_positions=32, n_window=5, output_dim=64, activation_function="gelu"),
    position_id_per_seconds=25, seconds_per_chunk=2, **TOKENS)
FRAME_GRID = 8  # patches per side of every image / video frame pair
VIDEO_SECOND_PER_GRID = 2.0  # what Crab+'s processor settings give (no fps passed): t step 50
MEL_FRAMES_PAD = 8  # feature columns past each clip's longest valid run (masked out; garbage values)


def hf_thinker(sizes: Mapping = HF_SIZES, seed: int = 0):
    """``(torch model, its thinker config dict)``: eager attention everywhere, random O(1) weights."""
    import torch
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerForConditionalGeneration

    config = Qwen2_5OmniThinkerConfig(**sizes, attn_implementation="eager")
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    for sub in (model.config, model.config.text_config, model.config.vision_config, model.config.audio_config):
        assert sub._attn_implementation == "eager", (type(sub).__name__, sub._attn_implementation)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:  # LayerNorm / RMSNorm gains and shifts
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / float(np.prod(p.shape[1:])) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model, config.to_dict()


def crab_config(hf_config: Mapping, *, mrope_section: Sequence[int] | None = None) -> CrabPlusConfig:
    """The crab_jax config of the HF thinker config dict (no I-LoRA); ``mrope_section`` replaces
    the text config's split (the negative control: a config that lies about the split)."""
    if mrope_section is not None:
        text = copy.deepcopy(dict(hf_config["text_config"]))
        text["rope_scaling"]["mrope_section"] = list(mrope_section)
        hf_config = {**hf_config, "text_config": text}
    return thinker_config_from_hf(hf_config, lora=None,
                                  frame_size=FRAME_GRID * hf_config["vision_config"]["patch_size"])


def crab_thinker(hf_model, cfg: CrabPlusConfig) -> CrabPlusThinker:
    """``CrabPlusThinker(cfg)`` holding the torch model's weights (strict: every key, every shape)."""
    state = {HF_PREFIX + k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    model = abstract_module(lambda: CrabPlusThinker(cfg, rngs=nnx.Rngs(0)))
    arrays = thinker_table(cfg, lora=False).to_jax(state, expected_shapes(model), source="HF thinker state dict")
    load_flat(model, arrays, source="HF thinker state dict")
    model.eval()
    return model


# -- inputs -----------------------------------------------------------------------------------
# A sample is a list of segments: ("text", n) n random text tokens, ("image", 1), ("video", t)
# a video of temporal grid t, ("audio", L) a clip of L valid mel frames.


def _placeholders(kind: str, size: int, cfg: CrabPlusConfig) -> list[int]:
    tok = cfg.tokens
    if kind == "audio":
        return [tok.audio_start] + [tok.audio] * audio_token_count(size) + [tok.audio_end]
    count = size * cfg.tokens_per_slice  # image: size 1
    return [tok.vision_start] + [tok.image if kind == "image" else tok.video] * count + [tok.vision_end]


def processor_inputs(samples: Sequence[Sequence[tuple[str, int]]], cfg: CrabPlusConfig, seq_len: int,
                     padding: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The processor's collated outputs for ``samples`` (media in batch order), padded to ``seq_len``.

    Returns ``input_ids, attention_mask [b, seq_len]`` and as present ``pixel_values [P, C*T*p*p]``
    + ``image_grid_thw [n, 3]``, ``pixel_values_videos`` + ``video_grid_thw`` +
    ``video_second_per_grid [n]``, ``input_features [n_audio, mel, T]`` + ``feature_attention_mask
    [n_audio, T]`` (a prefix of each row; features past it are large garbage that must not enter).
    """
    assert padding in ("left", "right"), padding
    rng = np.random.default_rng(seed)
    rows, pixels, clips = [], {"image": [], "video": []}, []
    for segments in samples:
        ids = []
        for kind, size in segments:
            if kind == "text":
                ids += rng.integers(0, FIRST_SPECIAL, size).tolist()
                continue
            ids += _placeholders(kind, size, cfg)
            if kind == "audio":
                clips.append(size)
            else:
                grid = (size, FRAME_GRID, FRAME_GRID)
                pixels[kind].append((grid, rng.standard_normal((int(np.prod(grid)), cfg.patch_dim), np.float32)))
        if len(ids) > seq_len:
            raise ValueError(f"a sample has {len(ids)} tokens > seq_len {seq_len}")
        rows.append(ids)
    input_ids = np.full((len(rows), seq_len), cfg.tokens.pad, np.int64)
    mask = np.zeros((len(rows), seq_len), np.int64)
    for i, ids in enumerate(rows):
        where = slice(0, len(ids)) if padding == "right" else slice(seq_len - len(ids), seq_len)
        input_ids[i, where], mask[i, where] = ids, 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    for kind, (values, grids) in {"image": ("pixel_values", "image_grid_thw"),
                                  "video": ("pixel_values_videos", "video_grid_thw")}.items():
        if pixels[kind]:
            out[grids] = np.asarray([g for g, _ in pixels[kind]], np.int64)
            out[values] = np.concatenate([p for _, p in pixels[kind]])
    if pixels["video"]:
        out["video_second_per_grid"] = np.full(len(pixels["video"]), VIDEO_SECOND_PER_GRID, np.float32)
    if clips:
        width = max(clips) + MEL_FRAMES_PAD
        frame = np.arange(width)
        out["feature_attention_mask"] = (frame[None] < np.asarray(clips)[:, None]).astype(np.int64)
        feats = rng.standard_normal((len(clips), cfg.audio.num_mel_bins, width), np.float32)
        out["input_features"] = np.where(out["feature_attention_mask"][:, None].astype(bool), feats, 1e3)
        out["input_features"] = out["input_features"].astype(np.float32)
    return out


# -- the two sides ----------------------------------------------------------------------------


def _torch_inputs(inputs: Mapping[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}


def hf_logits(hf_model, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[b, S, V]`` float32 logits of the torch thinker (it computes its own M-RoPE positions)."""
    import torch

    with torch.no_grad():
        out = hf_model(**_torch_inputs(inputs), use_audio_in_video=False, use_cache=False, return_dict=True)
    return out.logits.numpy()


def hf_rope_index(hf_model, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """HF's ``get_rope_index``: positions ``[3, b, S]`` and deltas ``[b, 1]`` (before the pad count)."""
    import torch

    t = _torch_inputs(inputs)
    mel = t.get("feature_attention_mask")
    with torch.no_grad():
        pos, deltas = hf_model.get_rope_index(
            t["input_ids"], t.get("image_grid_thw"), t.get("video_grid_thw"), t["attention_mask"],
            use_audio_in_video=False, audio_seqlens=None if mel is None else mel.sum(-1),
            second_per_grids=t.get("video_second_per_grid"))
    return pos.numpy(), deltas.numpy()


def common_slots(inputs: Sequence[Mapping[str, np.ndarray]], cfg: CrabPlusConfig) -> dict[str, int]:
    """The largest slot counts any of ``inputs`` needs: one static bucket, so every batch built
    with them (``thinker_batch(x, cfg, **slots)``) shares one compiled shape."""
    needs = [thinker_batch(x, cfg) for x in inputs]
    return {"visual_slots": max(b["pixel_slices"].shape[1] for b in needs),
            "audio_chunk_slots": max(b["audio_chunks"].shape[1] for b in needs),
            "audio_token_slots": max(b["audio_pool_index"].shape[1] for b in needs)}


def crab_forward(model: CrabPlusThinker):
    """A jitted ``batch (numpy) -> logits [b, S, V]`` of ``model``."""
    graph, state = nnx.split(model)

    @jax.jit
    def run(state, batch):
        return nnx.merge(graph, state)(batch).logits

    return lambda batch: np.asarray(run(state, {k: jnp.asarray(v) for k, v in batch.items()}))
