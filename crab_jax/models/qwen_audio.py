"""The Qwen2.5-Omni thinker's audio encoder (Whisper style), I-LoRA on its attention q/k/v.

Attribute paths are the torch ones under ``thinker.audio_tower.``::

    conv1.{weight [3, mel, d], bias}              Conv1d(mel -> d, k3, p1)      (torch [d, mel, 3])
    conv2.{weight [3, d, d], bias}                Conv1d(d -> d, k3, s2, p1)
    layers.{i}.self_attn.{q_proj, v_proj}.*       with bias  } ILoRALinear when ``lora``
    layers.{i}.self_attn.k_proj.*                 NO bias    } names them as targets
    layers.{i}.self_attn.out_proj.*               plain Linear with bias (peft: not a target)
    layers.{i}.{self_attn_layer_norm, final_layer_norm}.*, layers.{i}.{fc1, fc2}.*
    ln_post.*, proj.* [d, output_dim]
    audio_bos_eos_token.weight [2, output_dim]    in the checkpoint, unused by the forward

The sinusoidal position table is computed (torch keeps it as a non-persistent buffer: the
checkpoint has no key for it). With ``scan_layers`` the layers are one stacked layer
(``layers.self_attn.q_proj.weight`` is ``[layers, d, d]``), built with ``nnx.vmap`` and run
with ``nnx.scan`` like :mod:`crab_jax.models.llama`.

**Static chunk layout.** The original cuts the valid mel frames of every clip into chunks of
``2 * n_window`` frames (the last chunk of a clip holds the rest, possibly ONE frame), pads
them to the longest, and runs the conv front end on that ragged batch; attention is
restricted to each chunk (``cu_seqlens``). Here the chunks are fixed-size slots
(:func:`pack_audio` on the host fills them), so shapes never depend on the audio:

    chunks [n, 2W, mel], chunk_frames [n]  (W = n_window; 0 frames = an unused slot)
      -> conv1 -> GELU -> x chunk mask -> conv2 (stride 2) -> GELU -> + positions 0..W-1
      -> [n, W, d]; conv frame t of chunk j is valid iff t < (chunk_frames[j] - 1) // 2 + 1
      -> pre-LN layers, attention only inside a chunk (key mask)
      -> rows pool_index[:, 0] and pool_index[:, 1] of the flattened [n * W, d] averaged
         (the per-clip AvgPool1d(2, 2); an index, because a pair crosses a chunk boundary
         when W is odd) -> ln_post -> proj -> [m, output_dim]

Padding the chunks to ``2W`` instead of the longest chunk changes no valid value: the conv1
output is masked to zero past the chunk's frames, which is what conv2 sees as padding.

Numerics: LayerNorm statistics in float32 (as everywhere here). The shared
:func:`~crab_jax.models.attention.dot_product_attention` takes the softmax in float32; the
original's eager audio attention takes it in the activation dtype (identical in float32,
slightly more accurate than the original in bf16). float16 activations are clamped after
every layer as the original does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.attention import dot_product_attention, merge_heads, split_heads
from crab_jax.models.ilora import ILoRAConfig, projection
from crab_jax.models.layers import (
    ACTIVATIONS, Axes, Embed, LayerNorm, Linear, activation, as_dtype, fan_in_init, gelu_exact, zeros_init)
from crab_jax.models.llama import REMAT_POLICIES, remat_policy
from crab_jax.parallel.sharding import param

_HF_FIELDS = ("num_mel_bins", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "d_model",
              "max_source_positions", "n_window", "output_dim", "activation_function")


@dataclasses.dataclass(frozen=True)
class QwenAudioConfig:
    """HF ``Qwen2_5OmniAudioEncoderConfig`` fields (defaults: the 7B release) + crab_jax options."""

    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    max_source_positions: int = 1500
    n_window: int = 100  # a chunk is 2 * n_window mel frames -> n_window conv frames
    output_dim: int = 3584
    activation_function: str = "gelu"
    # crab_jax options
    scan_layers: bool = False
    remat: str = "none"  # one of REMAT_POLICIES, per encoder layer
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        object.__setattr__(self, "param_dtype", as_dtype(self.param_dtype))
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"{self.encoder_attention_heads} heads do not divide d_model {self.d_model}")
        if self.d_model % 2 or self.d_model < 4:
            raise ValueError(f"the sinusoidal positions need an even d_model >= 4, got {self.d_model}")
        if not 1 <= self.n_window <= self.max_source_positions:
            raise ValueError(f"n_window {self.n_window} must be in [1, max_source_positions "
                             f"{self.max_source_positions}] (one chunk's conv frames take positions 0..n_window-1)")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} not in {REMAT_POLICIES}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"unknown activation_function {self.activation_function!r}; known: {sorted(ACTIVATIONS)}")

    @property
    def chunk_length(self) -> int:
        """Mel frames per chunk slot (``2 * n_window``)."""
        return 2 * self.n_window

    @property
    def frames_per_chunk(self) -> int:
        """Conv frames per chunk slot: conv2 (k3, s2, p1) of ``2W`` frames gives ``W``."""
        return conv_output_frames(self.chunk_length)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **options) -> "QwenAudioConfig":
        """From the thinker config's ``audio_config`` dict; ``options`` set the crab_jax fields."""
        missing = [k for k in _HF_FIELDS if k not in config and k != "activation_function"]
        if missing:
            raise ValueError(f"audio_config lacks {missing}")
        fields = {k: config[k] for k in _HF_FIELDS if k in config}
        fields.update(options)
        return cls(**fields)


# -- host side: lengths, chunks, packing (numpy) ------------------------------------------


def conv_output_frames(mel_frames):
    """Conv2 (k3, stride 2, pad 1) output length ``(L - 1) // 2 + 1``; 0 for 0 (an unused slot).

    Works on ints, numpy arrays and jax arrays alike.
    """
    if isinstance(mel_frames, (int, np.integer)):
        return (mel_frames - 1) // 2 + 1 if mel_frames > 0 else 0
    xp = np if isinstance(mel_frames, np.ndarray) else jnp
    return xp.where(mel_frames > 0, (mel_frames - 1) // 2 + 1, 0)


def conv_frame_valid(chunk_frames: jax.Array, cfg: QwenAudioConfig) -> jax.Array:
    """``[...]`` mel frames per chunk slot -> ``[..., W]`` bool: which conv frames (the layers'
    rows) of each chunk are valid (none of an unused slot)."""
    return jnp.arange(cfg.frames_per_chunk) < conv_output_frames(chunk_frames)[..., None]


def audio_lengths(valid_frames):
    """``(aftercnn_lens, token_lens)`` for ``L`` valid mel frames (int or ``[clips]`` array).

    ``aftercnn = (L - 1) // 2 + 1`` (the conv frames of a clip, summed over its chunks) and
    ``tokens = (aftercnn - 2) // 2 + 1`` (AvgPool1d(2, 2), odd last frame dropped): the
    original's ``_get_feat_extract_output_lengths``. 25 tokens per second of audio.
    """
    after = (np.asarray(valid_frames) - 1) // 2 + 1
    tokens = (after - 2) // 2 + 1
    if isinstance(valid_frames, (int, np.integer)):
        return int(after), int(tokens)
    return after, tokens


def audio_token_count(valid_frames: int) -> int:
    """LLM tokens of one clip with ``valid_frames`` mel frames: ``((L-1)//2+1-2)//2+1``."""
    return audio_lengths(int(valid_frames))[1]


def audio_chunks(features: np.ndarray, valid_frames: int, n_window: int) -> tuple[np.ndarray, np.ndarray]:
    """One clip's valid frames cut into chunk slots.

    Args:
      features: ``[mel, T]`` log-mel (Whisper FE output); the first ``valid_frames`` frames are
        the clip (``feature_attention_mask`` is a prefix).
      valid_frames: ``L``, ``1 <= L <= T``.
      n_window: half the chunk length.
    Returns:
      chunks ``[k, 2 * n_window, mel]`` float32 (channels last, zero past each chunk's frames)
      with ``k = ceil(L / (2 * n_window))``, and chunk_frames ``[k]`` int32: ``2 * n_window``
      except the tail, which holds the rest (it can be 1 frame).
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be [mel, T], got shape {features.shape}")
    valid_frames = int(valid_frames)
    if not 1 <= valid_frames <= features.shape[1]:
        raise ValueError(f"valid_frames {valid_frames} must be in [1, {features.shape[1]}] (the clip's frames)")
    size = 2 * n_window
    k = -(-valid_frames // size)
    frames = np.full((k,), size, np.int32)
    frames[-1] = valid_frames - (k - 1) * size
    padded = np.zeros((features.shape[0], k * size), np.float32)
    padded[:, :valid_frames] = features[:, :valid_frames]
    chunks = padded.T.reshape(k, size, features.shape[0])
    return chunks, frames


def valid_rows(chunk_frames: np.ndarray, n_window: int) -> np.ndarray:
    """Rows of the flattened conv output ``[n * n_window, d]`` that hold valid frames, in order.

    ``chunk_frames`` ``[n]`` (mel frames per slot) -> ``[sum over chunks of (c - 1) // 2 + 1]``
    int32 (``j * n_window + t``): the original's ``padded_embed[padded_mask_after_cnn]``.
    """
    chunk_frames = np.asarray(chunk_frames)
    out = conv_output_frames(chunk_frames)
    return np.concatenate([j * n_window + np.arange(o, dtype=np.int32) for j, o in enumerate(out)]
                          + [np.zeros((0,), np.int32)]).astype(np.int32)


def pack_audio(clips: Sequence[tuple[np.ndarray, int]], n_window: int, chunk_slots: int,
               token_slots: int) -> dict[str, np.ndarray]:
    """Puts a list of clips into fixed numbers of chunk slots and token slots.

    Args:
      clips: ``(features [mel, T], valid_frames)`` per clip, in batch order.
      n_window: the config's ``n_window``.
      chunk_slots, token_slots: the static sizes ``n`` and ``m``.
    Returns:
      ``chunks [n, 2 * n_window, mel]`` float32, ``chunk_frames [n]`` int32 (0: unused slot),
      ``pool_index [m, 2]`` int32 (pairs of rows of the flattened ``[n * n_window, d]`` conv
      output; padded slots point at row 0 so their output is finite), ``token_valid [m]``
      bool, ``clip_of_token [m]`` int32 (-1 for padded slots). Clip ``i``'s tokens are the
      consecutive valid slots with ``clip_of_token == i``.
    Raises:
      ValueError naming the clips' needs when they do not fit.
    """
    if not clips:
        raise ValueError("pack_audio needs at least one clip")
    per_clip = [audio_chunks(f, v, n_window) for f, v in clips]
    mels = {c.shape[2] for c, _ in per_clip}
    if len(mels) != 1:
        raise ValueError(f"clips have different mel bin counts {sorted(mels)}")
    chunk_counts = [len(fr) for _, fr in per_clip]
    token_counts = [audio_token_count(int(fr.sum())) for _, fr in per_clip]
    if sum(chunk_counts) > chunk_slots:
        raise ValueError(f"audio does not fit: {len(clips)} clip(s) need {sum(chunk_counts)} chunk slots "
                         f"(per clip {chunk_counts}, {2 * n_window} mel frames each), only {chunk_slots} available")
    if sum(token_counts) > token_slots:
        raise ValueError(f"audio does not fit: {len(clips)} clip(s) need {sum(token_counts)} token slots "
                         f"(per clip {token_counts}), only {token_slots} available")
    chunks = np.zeros((chunk_slots, 2 * n_window, mels.pop()), np.float32)
    chunk_frames = np.zeros((chunk_slots,), np.int32)
    pool_index = np.zeros((token_slots, 2), np.int32)
    clip_of_token = np.full((token_slots,), -1, np.int32)
    slot = token = 0
    for i, ((c, fr), n_tok) in enumerate(zip(per_clip, token_counts)):
        chunks[slot:slot + len(fr)] = c
        chunk_frames[slot:slot + len(fr)] = fr
        rows = valid_rows(fr, n_window) + slot * n_window
        pool_index[token:token + n_tok] = rows[: 2 * n_tok].reshape(n_tok, 2)
        clip_of_token[token:token + n_tok] = i
        slot += len(fr)
        token += n_tok
    return dict(chunks=chunks, chunk_frames=chunk_frames, pool_index=pool_index,
                token_valid=clip_of_token >= 0, clip_of_token=clip_of_token)


def sinusoid_positions(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """``[length, channels]`` float32 ``[sin(t * inv), cos(t * inv)]``,
    ``inv = exp(-ln(max_timescale) / (channels/2 - 1) * arange(channels/2))``.

    The products are float32 as in torch; exp / sin / cos are taken in float64 and rounded
    (correctly rounded float32). An ulp of ``inv`` grows ``t``-fold in the angle: torch's
    float32 exp is correctly rounded for almost every entry (all of them at d = 32), numpy's
    float32 exp differs more often.
    """
    half = channels // 2
    exponent = np.float32(-math.log(max_timescale) / (half - 1)) * np.arange(half, dtype=np.float32)
    inv = np.exp(exponent.astype(np.float64)).astype(np.float32)
    scaled = (np.arange(length, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


# -- modules ----------------------------------------------------------------------------------


class Conv1d(nnx.Module):
    """torch ``Conv1d`` on channels-last ``[n, T, in]``; ``weight`` is ``[k, in, out]`` (mapping.CONV1D)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding: int = 0,
                 axes: Axes = ("conv", "channels", "embed"), dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.stride, self.padding, self.dtype = stride, padding, dtype
        self.weight = param(fan_in_init, rngs.params(), (kernel, in_ch, out_ch), axes, param_dtype)
        self.bias = param(zeros_init, rngs.params(), (out_ch,), (axes[-1],), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[n, T, in] -> [n, (T + 2p - k) // s + 1, out]``."""
        x = x.astype(self.dtype)
        y = jax.lax.conv_general_dilated(x, self.weight[...].astype(self.dtype), window_strides=(self.stride,),
                                         padding=((self.padding, self.padding),),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return y + self.bias[...].astype(self.dtype)


class QwenAudioAttention(nnx.Module):
    """Bidirectional multi-head self-attention over ``[b, s, d]`` with a key mask."""

    def __init__(self, cfg: QwenAudioConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        d = cfg.d_model
        self.num_heads = cfg.encoder_attention_heads
        proj = functools.partial(projection, in_features=d, out_features=d, lora=lora, dtype=cfg.dtype,
                                 param_dtype=cfg.param_dtype, rngs=rngs)
        self.q_proj = proj("q_proj", use_bias=True, axes=("embed", "heads"))
        self.k_proj = proj("k_proj", use_bias=False, axes=("embed", "kv"))
        self.v_proj = proj("v_proj", use_bias=True, axes=("embed", "kv"))
        self.out_proj = Linear(d, d, axes=("heads", "embed"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                               rngs=rngs)

    def __call__(self, x: jax.Array, key_valid: jax.Array) -> jax.Array:
        """``x [b, s, d]``, ``key_valid [b, s]`` bool -> ``[b, s, d]``.

        A query whose row has no valid key (an unused chunk slot) gets uniform weights: finite.
        """
        q, k, v = (split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = dot_product_attention(q, k, v, mask=key_valid[:, None, None, :])
        return self.out_proj(merge_heads(out))


class QwenAudioEncoderLayer(nnx.Module):
    """Pre-LN block: ``h += attn(LN(h)); h += fc2(act(fc1(LN(h))))`` (LayerNorm eps 1e-5)."""

    def __init__(self, cfg: QwenAudioConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.encoder_ffn_dim
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.self_attn = QwenAudioAttention(cfg, lora, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(d, param_dtype=cfg.param_dtype, rngs=rngs)
        self.fc1 = Linear(d, f, axes=("embed", "mlp"), **kw)
        self.fc2 = Linear(f, d, axes=("mlp", "embed"), **kw)
        self.final_layer_norm = LayerNorm(d, param_dtype=cfg.param_dtype, rngs=rngs)
        self.act = activation(cfg.activation_function)

    def __call__(self, h: jax.Array, key_valid: jax.Array) -> jax.Array:
        """``h [b, s, d]``, ``key_valid [b, s]`` -> ``[b, s, d]``."""
        h = h + self.self_attn(self.self_attn_layer_norm(h), key_valid)
        h = h + self.fc2(self.act(self.fc1(self.final_layer_norm(h))))
        if h.dtype == jnp.float16:  # the original's overflow guard
            bound = float(jnp.finfo(jnp.float16).max) - 1000
            h = jnp.clip(h, -bound, bound)
        return h


class QwenAudioEncoder(nnx.Module):
    """``audio_tower`` of the Qwen2.5-Omni thinker; see the module docstring for the layout."""

    def __init__(self, cfg: QwenAudioConfig, lora: ILoRAConfig | None = None, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, kw = cfg.d_model, dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.conv1 = Conv1d(cfg.num_mel_bins, d, 3, padding=1, axes=("conv", None, "embed"), **kw)
        self.conv2 = Conv1d(d, d, 3, stride=2, padding=1, axes=("conv", "channels", "embed"), **kw)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.encoder_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs):
                return QwenAudioEncoderLayer(cfg, lora, rngs=rngs)

            self.layers = stacked(rngs)
        else:
            self.layers = nnx.List([QwenAudioEncoderLayer(cfg, lora, rngs=rngs) for _ in range(cfg.encoder_layers)])
        self.ln_post = LayerNorm(d, param_dtype=cfg.param_dtype, rngs=rngs)
        self.proj = Linear(d, cfg.output_dim, axes=("mlp", "embed"), **kw)
        self.audio_bos_eos_token = Embed(2, cfg.output_dim, axes=(None, "embed"), param_dtype=cfg.param_dtype,
                                         rngs=rngs)

    def embed(self, chunks: jax.Array, chunk_frames: jax.Array) -> jax.Array:
        """Conv front end + positions: ``chunks [n, 2W, mel]``, ``chunk_frames [n]`` -> ``[n, W, d]``.

        The valid rows (:func:`valid_rows`) are the original's first-layer input.
        """
        cfg = self.cfg
        if chunks.shape[1:] != (cfg.chunk_length, cfg.num_mel_bins):
            raise ValueError(f"chunks must be [n, {cfg.chunk_length}, {cfg.num_mel_bins}], got {chunks.shape}")
        in_valid = jnp.arange(cfg.chunk_length)[None, :] < chunk_frames[:, None]  # [n, 2W]
        h = gelu_exact(self.conv1(chunks)) * in_valid[..., None].astype(cfg.dtype)
        h = gelu_exact(self.conv2(h))
        return h + jnp.asarray(sinusoid_positions(h.shape[1], cfg.d_model), cfg.dtype)

    def frame_valid(self, chunk_frames: jax.Array) -> jax.Array:
        """``[n]`` mel frames -> ``[n, W]`` bool: which conv frames of each chunk are valid."""
        return conv_frame_valid(chunk_frames, self.cfg)

    def encode(self, h: jax.Array, key_valid: jax.Array) -> jax.Array:
        """The layers: ``h [b, s, d]``, attention within each row over ``key_valid [b, s]`` keys."""
        def run(layer, h):
            return layer(h, key_valid)

        if self.cfg.remat != "none":
            run = nnx.remat(run, policy=remat_policy(self.cfg.remat), prevent_cse=not self.cfg.scan_layers)
        if self.cfg.scan_layers:
            scan = nnx.scan(run, in_axes=(0, nnx.Carry), out_axes=nnx.Carry,
                            transform_metadata={nnx.PARTITION_NAME: "layers"})
            return scan(self.layers, h)
        for layer in self.layers:
            h = run(layer, h)
        return h

    def pool(self, h: jax.Array, pool_index: jax.Array) -> jax.Array:
        """``h [n, W, d]``, ``pool_index [m, 2]`` -> pairwise means -> ln_post -> proj ``[m, output_dim]``."""
        flat = h.reshape(-1, h.shape[-1])
        pooled = (jnp.take(flat, pool_index[:, 0], axis=0) + jnp.take(flat, pool_index[:, 1], axis=0)) / 2
        return self.proj(self.ln_post(pooled))

    def __call__(self, chunks: jax.Array, chunk_frames: jax.Array, pool_index: jax.Array) -> jax.Array:
        """``chunks [n, 2W, mel]``, ``chunk_frames [n]`` int32, ``pool_index [m, 2]`` int32
        (from :func:`pack_audio`) -> audio tokens ``[m, output_dim]``."""
        h = self.embed(chunks, chunk_frames)
        h = self.encode(h, self.frame_valid(chunk_frames))
        return self.pool(h, pool_index)
