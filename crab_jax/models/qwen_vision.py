"""Qwen2.5-Omni thinker's vision encoder (Qwen2.5-VL style window ViT) with I-LoRA on its MLPs.

Attribute names equal HF's ``Qwen2_5OmniVisionEncoder`` (the thinker's ``visual.*``)::

    patch_embed.proj.weight              [C*T*p*p, width]  (torch Conv3d [width, C, T, p, p], no bias)
    blocks.{i}.norm1.weight, norm2.weight [width]           (RMSNorm)
    blocks.{i}.attn.{q,k,v,proj}.*       Linear with bias (never I-LoRA targets)
    blocks.{i}.mlp.{gate,up,down}_proj.* Linear with bias, ILoRALinear when ``lora`` is given
    merger.ln_q.weight                   [width]
    merger.mlp.0.*, merger.mlp.2.*       Linear [4*width, 4*width], [4*width, out_hidden_size]

With ``scan_layers`` the blocks are ONE stacked block (leading ``layers`` axis, created with
``nnx.vmap`` and applied with ``nnx.scan``); which blocks attend fully is a per-layer flag
scanned alongside.

**Slices.** HF runs the encoder on all images (or all videos) of a batch at once, but its
attention never crosses a temporal grid slice (full-attention blocks are restricted to one
slice, ``cu_seqlens``; windows lie inside a slice, ``cu_window_seqlens``), the 2-D rotary
depends only on a row's (h, w) patch position, and the merger reads 4 consecutive rows. So
this port runs on *slices*: ``pixel_slices [n, h*w, C*T*p*p]`` (an image is 1 slice, a
video with grid t is t slices, any slices of one patch grid ``(h, w)`` may share a call)
gives ``[n, h*w/merge^2, out_hidden_size]``, equal to HF's concatenated call. Every layout
(window permutation, window segments, rotary positions) is a numpy function of the static
``(h, w, cfg)``, computed at trace time and applied with gathers; shapes never depend on data.

Numerics follow HF in eager mode: RMSNorm in float32, rotary ``q*cos + rotate_half(q)*sin``
in float32 with ``cos/sin`` of ``cat(f, f)``, softmax in float32, exact GELU in the merger.
The masks are dense ``[h*w, h*w]`` booleans (256 rows per slice for Crab+'s 224^2 frames).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.attention import dot_product_attention, merge_heads, split_heads
from crab_jax.models.ilora import ILoRAConfig, projection
from crab_jax.models.layers import Linear, RMSNorm, activation, as_dtype, gelu_exact
from crab_jax.models.llama import REMAT_POLICIES, apply_rotary, remat_policy

ROTARY_THETA = 10000.0  # HF's Qwen2_5_VisionRotaryEmbedding default (not a config field)
_PAD = -100  # HF's fill value for the padded window grid


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
    """HF ``Qwen2_5OmniVisionEncoderConfig`` fields (defaults: Qwen2.5-Omni-7B) + crab_jax options."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112  # pixels; windows are window_size // merge // patch merge units square
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6  # HF hard-codes 1e-6 for norm1 / norm2 / ln_q
    # crab_jax options
    scan_layers: bool = False
    remat: str = "none"  # one of REMAT_POLICIES, applied per block
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        object.__setattr__(self, "param_dtype", as_dtype(self.param_dtype))
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(f"hidden_size {self.hidden_size} / num_heads {self.num_heads}: the head width "
                             "must be a multiple of 4 (2-D rotary on half of it)")
        if self.window_units < 1:
            raise ValueError(f"window_size {self.window_size} is under one merge unit "
                             f"({self.spatial_merge_size * self.patch_size} px)")
        if any(not 0 <= i < self.depth for i in self.fullatt_block_indexes):
            raise ValueError(f"fullatt_block_indexes {self.fullatt_block_indexes} outside 0..{self.depth - 1}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} not in {REMAT_POLICIES}")
        activation(self.hidden_act)  # fails early on an unknown name

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Width of one processor pixel row: ``C * T * p * p`` (1176 for Qwen2.5-Omni)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        """Rows merged into one output token (``merge^2``): consecutive rows of the processor."""
        return self.spatial_merge_size ** 2

    @property
    def window_units(self) -> int:
        """Side of an attention window in merge units (HF's ``vit_merger_window_size``)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    def full_attention_flags(self) -> np.ndarray:
        """``[depth]`` bool: True for the blocks that attend over the whole slice."""
        return np.isin(np.arange(self.depth), self.fullatt_block_indexes)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **options) -> "QwenVisionConfig":
        """From the ``vision_config`` dict of a Qwen2.5-Omni ``thinker_config``; ``options`` set the
        crab_jax fields (scan_layers, remat, dtype, param_dtype)."""
        names = ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                 "spatial_merge_size", "temporal_patch_size", "window_size", "fullatt_block_indexes",
                 "out_hidden_size", "hidden_act")
        fields = {n: config[n] for n in names if n in config}
        fields.update(options)
        return cls(**fields)


# -- host-side layouts (numpy, static per patch grid) ---------------------------------------


def _check_grid(h: int, w: int, cfg: QwenVisionConfig) -> None:
    m = cfg.spatial_merge_size
    if h <= 0 or w <= 0 or h % m or w % m:
        raise ValueError(f"patch grid ({h}, {w}) must be positive multiples of spatial_merge_size {m}")


def _windows(h: int, w: int, cfg: QwenVisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(unit_index [h*w/m^2], units_per_window [num_windows])`` of one slice, HF's
    ``get_window_index`` for grid ``(1, h, w)``: the merge grid ``(h/m, w/m)`` is padded by
    ``ws - g % ws`` on each axis (a full empty window when ``ws`` divides ``g``), cut into
    ``ws x ws`` windows read row-major, units row-major inside a window; padding dropped.
    Empty windows keep a count of 0."""
    _check_grid(h, w, cfg)
    ws, m = cfg.window_units, cfg.spatial_merge_size
    gh, gw = h // m, w // m
    ph, pw = gh + ws - gh % ws, gw + ws - gw % ws
    grid = np.full((ph, pw), _PAD, np.int64)
    grid[:gh, :gw] = np.arange(gh * gw).reshape(gh, gw)
    windows = grid.reshape(ph // ws, ws, pw // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    flat = windows.reshape(-1)
    return flat[flat != _PAD], (windows != _PAD).sum(-1)


def window_index(h: int, w: int, cfg: QwenVisionConfig) -> np.ndarray:
    """``[h*w/m^2]`` int64: merge units of one ``(h, w)`` patch slice in window order (HF's
    ``window_index`` for one temporal slice; slice k of a video adds ``k*h*w/m^2``)."""
    return _windows(h, w, cfg)[0]


def window_row_order(h: int, w: int, cfg: QwenVisionConfig) -> np.ndarray:
    """``[h*w]`` int64: processor rows in window order (each unit's ``m^2`` consecutive rows)."""
    unit = cfg.merge_unit
    return (window_index(h, w, cfg)[:, None] * unit + np.arange(unit)).reshape(-1)


def window_segments(h: int, w: int, cfg: QwenVisionConfig) -> np.ndarray:
    """``[h*w]`` int32: window id (0, 1, ... over non-empty windows) of each row in window order."""
    counts = _windows(h, w, cfg)[1]
    counts = counts[counts > 0]  # empty windows vanish (HF: unique_consecutive of cu_window_seqlens)
    return np.repeat(np.arange(len(counts), dtype=np.int32), counts * cfg.merge_unit)


def window_mask(h: int, w: int, cfg: QwenVisionConfig) -> np.ndarray:
    """``[h*w, h*w]`` bool over rows in window order: True where both rows share a window. The
    full-attention blocks use an all-True mask (they see the whole slice)."""
    seg = window_segments(h, w, cfg)
    return seg[:, None] == seg[None, :]


def cu_seqlens(segments: np.ndarray) -> np.ndarray:
    """``[rows]`` segment ids (equal ids contiguous) -> ``[num_segments + 1]`` int32 boundaries
    ``0, ..., rows`` (HF's ``cu_seqlens`` / ``cu_window_seqlens`` for those rows)."""
    segments = np.asarray(segments)
    starts = np.flatnonzero(np.diff(segments)) + 1
    return np.concatenate([[0], starts, [len(segments)]]).astype(np.int32)


def rotary_positions(h: int, w: int, cfg: QwenVisionConfig) -> np.ndarray:
    """``[h*w, 2]`` int64 ``(row, col)`` patch position of each processor row (rows ordered
    ``(h/m, w/m, m, m)``, HF's ``rot_pos_emb`` position ids of one slice)."""
    _check_grid(h, w, cfg)
    m = cfg.spatial_merge_size
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    merged = [p.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1) for p in (hpos, wpos)]
    return np.stack(merged, axis=-1)


def rotary_freqs(h: int, w: int, cfg: QwenVisionConfig) -> np.ndarray:
    """``[h*w, head_dim/2]`` float32 ``cat(row*inv, col*inv)`` per processor row, with
    ``inv = theta^(-arange(0, D, 2)/D)``, ``D = head_dim/2`` (computed in float32 like torch)."""
    d = cfg.head_dim // 2
    inv = np.float32(1.0) / (np.float32(ROTARY_THETA) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
    pos = rotary_positions(h, w, cfg).astype(np.float32)
    return np.concatenate([pos[:, :1] * inv, pos[:, 1:] * inv], axis=-1).astype(np.float32)


def split_slices(pixel_values: np.ndarray, grid_thw: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Processor output ``[P, C*T*p*p]`` + ``grid_thw [k, 3]`` -> per image / video
    ``(slices [t, h*w, C*T*p*p], (h, w))`` (the rows of one item are consecutive, slice-major)."""
    out, start = [], 0
    for t, h, w in np.asarray(grid_thw).tolist():
        n = t * h * w
        out.append((np.asarray(pixel_values[start:start + n]).reshape(t, h * w, -1), (h, w)))
        start += n
    if start != len(pixel_values):
        raise ValueError(f"grid_thw covers {start} rows, pixel_values has {len(pixel_values)}")
    return out


# -- modules ------------------------------------------------------------------------------------


class QwenVisionPatchEmbed(nnx.Module):
    """Conv3d with kernel = stride = (T, p, p) on one pixel row each: a bias-free Linear
    ``[n, s, C*T*p*p] -> [n, s, width]`` (``proj.weight`` is the flattened kernel)."""

    def __init__(self, cfg: QwenVisionConfig, *, rngs: nnx.Rngs):
        self.proj = Linear(cfg.patch_dim, cfg.hidden_size, use_bias=False, axes=(None, "embed"), dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class QwenVisionAttention(nnx.Module):
    """``q, k, v, proj`` (all with bias); 2-D rotary on q / k; attention under ``mask``."""

    def __init__(self, cfg: QwenVisionConfig, *, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        e = cfg.hidden_size
        self.q = Linear(e, e, axes=("embed", "heads"), **kw)
        self.k = Linear(e, e, axes=("embed", "heads"), **kw)
        self.v = Linear(e, e, axes=("embed", "heads"), **kw)
        self.proj = Linear(e, e, axes=("heads", "embed"), **kw)

    def _rotate(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """In float32 whatever the compute dtype (HF upcasts q / k)."""
        return apply_rotary(x.astype(jnp.float32), cos, sin).astype(x.dtype)

    def __call__(self, x: jax.Array, *, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        """x ``[n, s, width]``; cos / sin ``[1, s, head_dim]`` float32; mask ``[s, s]`` bool."""
        q = self._rotate(split_heads(self.q(x), self.num_heads), cos, sin)
        k = self._rotate(split_heads(self.k(x), self.num_heads), cos, sin)
        v = split_heads(self.v(x), self.num_heads)
        return self.proj(merge_heads(dot_product_attention(q, k, v, mask=mask[None, None])))


class QwenVisionMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))``, biased projections (I-LoRA targets)."""

    def __init__(self, cfg: QwenVisionConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        kw = dict(lora=lora, use_bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = projection("gate_proj", e, m, axes=("embed", "mlp"), **kw)
        self.up_proj = projection("up_proj", e, m, axes=("embed", "mlp"), **kw)
        self.down_proj = projection("down_proj", m, e, axes=("mlp", "embed"), **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class QwenVisionBlock(nnx.Module):
    """``x += attn(norm1(x)); x += mlp(norm2(x))``."""

    def __init__(self, cfg: QwenVisionConfig, lora: ILoRAConfig | None, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
        self.norm2 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
        self.attn = QwenVisionAttention(cfg, rngs=rngs)
        self.mlp = QwenVisionMLP(cfg, lora, rngs=rngs)

    def __call__(self, x: jax.Array, *, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), cos=cos, sin=sin, mask=mask)
        return x + self.mlp(self.norm2(x))


class QwenVisionMerger(nnx.Module):
    """``mlp.2(gelu(mlp.0(ln_q(x) viewed as [.., m^2 * width])))``; ``mlp.1`` holds no weights."""

    def __init__(self, cfg: QwenVisionConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        wide = cfg.hidden_size * cfg.merge_unit
        self.ln_q = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
        self.mlp = nnx.List([Linear(wide, wide, axes=("embed", "mlp"), **kw), None,
                             Linear(wide, cfg.out_hidden_size, axes=("mlp", "embed"), **kw)])
        self.merge_unit = cfg.merge_unit

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[n, s, width] -> [n, s / m^2, out_hidden_size]`` (m^2 consecutive rows per token)."""
        n, s, c = x.shape
        x = self.ln_q(x).reshape(n, s // self.merge_unit, self.merge_unit * c)
        return self.mlp[2](gelu_exact(self.mlp[0](x)))


class QwenVisionEncoder(nnx.Module):
    """Patch embedding, window / full attention blocks, patch merger; see the module docstring."""

    def __init__(self, cfg: QwenVisionConfig, lora: ILoRAConfig | None = None, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = QwenVisionPatchEmbed(cfg, rngs=rngs)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.depth)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs):
                return QwenVisionBlock(cfg, lora, rngs=rngs)

            self.blocks = stacked(rngs)
        else:
            self.blocks = nnx.List([QwenVisionBlock(cfg, lora, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = QwenVisionMerger(cfg, rngs=rngs)

    def _block_fn(self, *, cos, sin, windows):
        """``(block, x, full) -> x``: the block under the window mask, or all-True if ``full``."""

        def run(block, x, full):
            return block(x, cos=cos, sin=sin, mask=jnp.logical_or(windows, full))

        if self.cfg.remat != "none":
            run = nnx.remat(run, policy=remat_policy(self.cfg.remat), prevent_cse=not self.cfg.scan_layers)
        return run

    def __call__(self, pixel_slices: jax.Array, grid_hw: Sequence[int]) -> jax.Array:
        """Encodes slices of one patch grid.

        Args:
          pixel_slices: ``[n, h*w, C*T*p*p]`` processor rows, one temporal slice per leading index.
          grid_hw: ``(h, w)`` python ints, the patch grid of one slice (static).
        Returns:
          ``[n, h*w / m^2, out_hidden_size]`` in the processor's token order (HF's output rows).
        """
        cfg = self.cfg
        h, w = (int(v) for v in grid_hw)
        if pixel_slices.shape[1:] != (h * w, cfg.patch_dim):
            raise ValueError(f"pixel_slices {pixel_slices.shape} do not match grid {(h, w)} "
                             f"(expected [n, {h * w}, {cfg.patch_dim}])")
        order = window_row_order(h, w, cfg)
        freqs = jnp.asarray(rotary_freqs(h, w, cfg)[order])
        angles = jnp.concatenate([freqs, freqs], axis=-1)[None]  # [1, s, head_dim]
        run = self._block_fn(cos=jnp.cos(angles), sin=jnp.sin(angles), windows=jnp.asarray(window_mask(h, w, cfg)))
        full = jnp.asarray(cfg.full_attention_flags())

        x = jnp.take(self.patch_embed(pixel_slices), jnp.asarray(order), axis=1)
        if cfg.scan_layers:
            scan = nnx.scan(run, in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry,
                            transform_metadata={nnx.PARTITION_NAME: "layers"})
            x = scan(self.blocks, x, full)
        else:
            for i, block in enumerate(self.blocks):
                x = run(block, x, full[i])
        tokens = self.merger(x)
        return jnp.take(tokens, jnp.asarray(np.argsort(window_index(h, w, cfg))), axis=1)
