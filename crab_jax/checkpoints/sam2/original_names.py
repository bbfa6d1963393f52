"""HF ``Sam2Model`` names -> the original facebookresearch/sam2 checkpoint's names (``sam2.1_hiera_large.pt``).

The inverse of :func:`crab_jax.checkpoints.convert.tables.sam2.original_to_hf`, for writing a
``.pt`` and for naming a ``.pt``'s missing / mis-shaped tensors in its own words.
:func:`check_inverse` runs the forward renaming over the result, so this cannot drift from it
unnoticed. MLPs: HF's ``proj_in``, ``layers.{j}``, ``proj_out`` are the original's
``layers.0``, ``layers.{j+1}``, ``layers.{n-1}``; HF's ``prompt_encoder.point_embed.weight``
``[4, C]`` is the original's four ``point_embeddings.{i}.weight`` ``[1, C]``; HF's tied copy
``prompt_encoder.shared_embedding.positional_embedding`` is the original's single Gaussian matrix.

Keys of the original's video model (memory attention / encoder, object pointers, ...) that the
image path never uses are listed by :data:`VIDEO_ONLY`.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.tables.sam2 import original_to_hf

# SAM2Base's modules and parameters outside the image predictor (sam2/modeling/sam2_base.py).
VIDEO_ONLY = re.compile(r"^(memory_attention|memory_encoder|mask_downsample|obj_ptr_proj|obj_ptr_tpos_proj)\."
                        r"|^(maskmem_tpos_enc|no_mem_pos_enc|no_obj_ptr|no_obj_embed_spatial)$")

_POINT_EMBED = "prompt_encoder.point_embed.weight"
_TIED_PE = "prompt_encoder.shared_embedding.positional_embedding"
_PE = "shared_image_embedding.positional_embedding"
_ORIGINAL_POINT = "sam_prompt_encoder.point_embeddings.{}.weight"

# HF -> original, first match wins (the MLPs are handled first, by :func:`_mlp_key`).
_RENAMES = tuple((re.compile(p), r) for p, r in (
    (r"^no_memory_embedding$", "no_mem_embed"),
    (r"^vision_encoder\.backbone\.patch_embed\.projection\.", "image_encoder.trunk.patch_embed.proj."),
    (r"^vision_encoder\.backbone\.(pos_embed|pos_embed_window)$", r"image_encoder.trunk.\1"),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.layer_norm([12])\.", r"image_encoder.trunk.blocks.\1.norm\2."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|proj)\.", r"image_encoder.trunk.blocks.\1.\2."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv."),
    (rf"^({re.escape(_PE)}|{re.escape(_TIED_PE)})$", "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.(not_a_point_embed|no_mask_embed)\.", r"sam_prompt_encoder.\1."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "sam_prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "sam_prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "sam_prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "sam_prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "sam_prompt_encoder.mask_downscaling.6."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"sam_mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "sam_mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.transformer\.(.+)\.o_proj\.", r"sam_mask_decoder.transformer.\1.out_proj."),
    (r"^mask_decoder\.transformer\.(.+)\.([qkv]_proj)\.", r"sam_mask_decoder.transformer.\1.\2."),
    (r"^mask_decoder\.upscale_conv1\.", "sam_mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "sam_mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "sam_mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.(iou_token|mask_tokens|obj_score_token|conv_s0|conv_s1)\.", r"sam_mask_decoder.\1."),
))
_MLPS = tuple((re.compile(p), r) for p, r in (
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp$", r"image_encoder.trunk.blocks.\1.mlp"),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp$", r"sam_mask_decoder.transformer.layers.\1.mlp"),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)$",
     r"sam_mask_decoder.\1"),
))
_MLP_LAYER = re.compile(r"^(.+)\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$")


def _mlp_depths(keys) -> dict[str, int]:
    """HF MLP prefix -> the original's layer count (``layers.{j}`` + proj_in + proj_out)."""
    hidden: dict[str, int] = {}
    for key in keys:
        m = _MLP_LAYER.match(key)
        if m:
            j = -1 if m.group(3) is None else int(m.group(3))
            hidden[m.group(1)] = max(hidden.get(m.group(1), -1), j)
    return {prefix: j + 3 for prefix, j in hidden.items()}


def _mlp_key(key: str, depths: Mapping[str, int]) -> str | None:
    m = _MLP_LAYER.match(key)
    if not m:
        return None
    prefix, part, leaf = m.group(1), m.group(2), m.group(4)
    for pattern, repl in _MLPS:
        if pattern.match(prefix):
            i = 0 if part == "proj_in" else depths[prefix] - 1 if part == "proj_out" else int(m.group(3)) + 1
            return f"{pattern.sub(repl, prefix)}.layers.{i}.{leaf}"
    return None


def original_key(key: str, depths: Mapping[str, int]) -> str:
    """The original's name of the HF key ``key`` (not ``point_embed``, which splits into rows)."""
    new = _mlp_key(key, depths) or next((p.sub(r, key) for p, r in _RENAMES if p.match(key)), None)
    if new is None:
        raise MappingError(f"HF SAM2 key {key!r}: no original name (not part of the image path)")
    return new


def original_shapes(hf_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """HF key -> shape, as the original's key -> shape (the tied copy folded into one key)."""
    depths = _mlp_depths(hf_shapes)
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in hf_shapes.items():
        if key == _POINT_EMBED:
            out.update({_ORIGINAL_POINT.format(i): (1, shape[1]) for i in range(shape[0])})
        else:
            out[original_key(key, depths)] = tuple(shape)
    return out


def hf_to_original(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An HF ``Sam2Model`` image-path state dict under the original's names (see the module docstring)."""
    depths = _mlp_depths(state)
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        value = np.asarray(value)
        if key == _POINT_EMBED:
            out.update({_ORIGINAL_POINT.format(i): value[i: i + 1] for i in range(value.shape[0])})
            continue
        new = original_key(key, depths)
        if new in out and not np.array_equal(out[new], value):
            raise MappingError(f"HF SAM2 keys {_PE!r} and {_TIED_PE!r} (tied) hold different tensors")
        out[new] = value
    check_inverse(state, out)
    return out


def check_inverse(hf_state: Mapping[str, np.ndarray], original: Mapping[str, np.ndarray]) -> None:
    """``original_to_hf(original)`` must give back ``hf_state``'s names and shapes (the tied copy
    aside); reads no tensor data (zero-stride stand-ins)."""
    stand_ins = {k: np.broadcast_to(np.zeros((), np.asarray(v).dtype), np.shape(v)) for k, v in original.items()}
    back, dropped = original_to_hf(stand_ins)
    want = {k: tuple(np.shape(v)) for k, v in hf_state.items() if not (k == _TIED_PE and _PE in hf_state)}
    if _TIED_PE in want:
        want[_PE] = want.pop(_TIED_PE)
    got = {k: tuple(v.shape) for k, v in back.items()}
    if dropped or got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        raise MappingError(f"SAM2 original names: the inverse renaming disagrees with original_to_hf on {diff[:10]}"
                           f"{' (dropped ' + str(dropped[:10]) + ')' if dropped else ''}")
