"""Mapping table of SAM 2.1's image path (``crab_jax.models.sam2.Sam2ImageModel``) from HF ``Sam2Model``.

The crab_jax attribute paths are HF's state-dict keys, so every row maps a key to itself and
only picks the layout: Linear weights transpose, Conv2d -> HWIO, ConvTranspose2d ->
``[kh, kw, in, out]``; norms, biases, embeddings, ``pos_embed`` / ``pos_embed_window``
(torch ``[1, C, h, w]`` kept) and ``no_memory_embedding`` are copied.

HF stores the random-Fourier matrix twice (``shared_image_embedding.positional_embedding``
and its tied copy ``prompt_encoder.shared_embedding.positional_embedding``); crab_jax holds
it once. Rows are size-independent. HF checkpoints of the video model also hold memory
modules; :func:`image_path_keys` keeps only the keys this table knows.

:func:`original_to_hf` renames the original facebookresearch/sam2 checkpoint
(``sam2.1_hiera_large.pt``, its ``"model"`` dict) to these HF keys first.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np

from crab_jax.checkpoints.convert.mapping import (
    CONV2D, CONV_TRANSPOSE2D, IDENTITY, LINEAR, MappingTable, Rule, tied,
)

_BB = "vision_encoder.backbone"
_MD = "mask_decoder"
_TW = f"{_MD}.transformer"

# (torch key pattern, transform); the JAX path is the same pattern. First match wins.
_ROWS = (
    ("no_memory_embedding", IDENTITY),
    # trunk
    (f"{_BB}.patch_embed.projection.weight", CONV2D),
    (f"{_BB}.patch_embed.projection.bias", IDENTITY),
    (f"{_BB}.pos_embed", IDENTITY),
    (f"{_BB}.pos_embed_window", IDENTITY),
    (f"{_BB}.blocks.{{i}}.proj.weight", LINEAR),
    (f"{_BB}.blocks.{{i}}.proj.bias", IDENTITY),
    (f"{_BB}.blocks.{{i}}.{{norm}}.weight", IDENTITY),  # layer_norm1 / layer_norm2
    (f"{_BB}.blocks.{{i}}.{{norm}}.bias", IDENTITY),
    (f"{_BB}.blocks.{{i}}.{{mod}}.{{lin}}.weight", LINEAR),  # attn.qkv / attn.proj / mlp.proj_in / mlp.proj_out
    (f"{_BB}.blocks.{{i}}.{{mod}}.{{lin}}.bias", IDENTITY),
    # neck
    ("vision_encoder.neck.convs.{i}.weight", CONV2D),
    ("vision_encoder.neck.convs.{i}.bias", IDENTITY),
    # prompt encoder
    ("prompt_encoder.mask_embed.conv1.weight", CONV2D),
    ("prompt_encoder.mask_embed.conv2.weight", CONV2D),
    ("prompt_encoder.mask_embed.conv3.weight", CONV2D),
    ("prompt_encoder.mask_embed.{leaf}.weight", IDENTITY),  # layer_norm1 / layer_norm2
    ("prompt_encoder.mask_embed.{leaf}.bias", IDENTITY),
    ("prompt_encoder.{emb}.weight", IDENTITY),  # no_mask_embed / point_embed / not_a_point_embed
    # mask decoder: two-way transformer
    (f"{_TW}.layers.{{i}}.{{attn}}.{{proj}}.weight", LINEAR),  # *_attn.{q,k,v,o}_proj / mlp.proj_*
    (f"{_TW}.layers.{{i}}.{{attn}}.{{proj}}.bias", IDENTITY),
    (f"{_TW}.layers.{{i}}.{{norm}}.weight", IDENTITY),
    (f"{_TW}.layers.{{i}}.{{norm}}.bias", IDENTITY),
    (f"{_TW}.final_attn_token_to_image.{{proj}}.weight", LINEAR),
    (f"{_TW}.final_attn_token_to_image.{{proj}}.bias", IDENTITY),
    (f"{_TW}.layer_norm_final_attn.weight", IDENTITY),
    (f"{_TW}.layer_norm_final_attn.bias", IDENTITY),
    # mask decoder: heads (Sam2FeedForward MLPs: proj_in, layers.{j}, proj_out)
    (f"{_MD}.upscale_conv1.weight", CONV_TRANSPOSE2D),
    (f"{_MD}.upscale_conv2.weight", CONV_TRANSPOSE2D),
    (f"{_MD}.conv_s0.weight", CONV2D),
    (f"{_MD}.conv_s1.weight", CONV2D),
    (f"{_MD}.output_hypernetworks_mlps.{{i}}.layers.{{j}}.weight", LINEAR),
    (f"{_MD}.output_hypernetworks_mlps.{{i}}.layers.{{j}}.bias", IDENTITY),
    (f"{_MD}.output_hypernetworks_mlps.{{i}}.{{lin}}.weight", LINEAR),
    (f"{_MD}.output_hypernetworks_mlps.{{i}}.{{lin}}.bias", IDENTITY),
    (f"{_MD}.{{head}}.layers.{{j}}.weight", LINEAR),  # iou_prediction_head / pred_obj_score_head
    (f"{_MD}.{{head}}.layers.{{j}}.bias", IDENTITY),
    (f"{_MD}.{{head}}.{{lin}}.weight", LINEAR),
    (f"{_MD}.{{head}}.{{lin}}.bias", IDENTITY),
    (f"{_MD}.{{leaf}}.weight", IDENTITY),  # iou_token / mask_tokens / obj_score_token / upscale_layer_norm
    (f"{_MD}.{{leaf}}.bias", IDENTITY),  # the convolutions' and the norm's
)


def sam2_rules(torch_prefix: str = "", jax_prefix: str = "") -> list[Rule]:
    rules = [Rule(p, p, t) for p, t in _ROWS]
    rules.append(Rule("{pe}.positional_embedding", "shared_image_embedding.positional_embedding", IDENTITY,
                      tied=(tied("pe", ("shared_image_embedding", "prompt_encoder.shared_embedding")),)))
    return [r.with_prefix(torch_prefix, jax_prefix) for r in rules]


def sam2_table(cfg=None) -> MappingTable:
    """The ``Sam2ImageModel`` table (``cfg`` accepted for symmetry; rows are size-independent)."""
    del cfg
    return MappingTable("sam2_image", sam2_rules())


def image_path_keys(keys: Iterable[str]) -> list[str]:
    """The keys of an HF ``Sam2Model`` / ``Sam2VideoModel`` state dict that the image path uses."""
    table = sam2_table()
    return [k for k in keys if table.torch_key_to_jax(k) is not None]


# The original facebookresearch/sam2 checkpoint (``sam2.1_hiera_large.pt``'s ``"model"``) ->
# HF names, first match wins. The original's MLPs are ``layers.{0..n-1}``; HF's are
# ``proj_in``, ``layers.{0..n-3}``, ``proj_out`` (handled by :func:`_mlp_key`).
_ORIGINAL = tuple((re.compile(p), r) for p, r in (
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^image_encoder\.trunk\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^image_encoder\.trunk\.(pos_embed|pos_embed_window)$", r"vision_encoder.backbone.\1"),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.norm([12])\.", r"vision_encoder.backbone.blocks.\1.layer_norm\2."),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|proj)\.", r"vision_encoder.backbone.blocks.\1.\2."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "shared_image_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.(not_a_point_embed|no_mask_embed)\.", r"prompt_encoder.\1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^sam_mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^sam_mask_decoder\.transformer\.(.+)\.out_proj\.", r"mask_decoder.transformer.\1.o_proj."),
    (r"^sam_mask_decoder\.transformer\.(.+)\.([qkv]_proj)\.", r"mask_decoder.transformer.\1.\2."),
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^sam_mask_decoder\.(iou_token|mask_tokens|obj_score_token|conv_s0|conv_s1)\.", r"mask_decoder.\1."),
))
# MLPs of the original: (pattern of the MLP's prefix, HF prefix).
_ORIGINAL_MLPS = tuple((re.compile(p), r) for p, r in (
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.mlp$", r"vision_encoder.backbone.blocks.\1.mlp"),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp$", r"mask_decoder.transformer.layers.\1.mlp"),
    (r"^sam_mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)$",
     r"mask_decoder.\1"),
))
_POINT_EMBED = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_MLP_LAYER = re.compile(r"^(.+)\.layers\.(\d+)\.(weight|bias)$")


def original_to_hf(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renames an original SAM 2 ``"model"`` state dict to HF ``Sam2Model`` keys (image path only).

    The four ``point_embeddings.{i}.weight`` ``[1, C]`` become ``prompt_encoder.point_embed.weight``
    ``[4, C]``. Returns ``(hf_state, dropped)``: ``dropped`` lists the keys the image path does
    not use (memory attention / encoder, object pointers, ...), for the caller to check.
    """
    out, dropped, points = {}, [], {}
    depth: dict[str, int] = {}
    for key in state:  # an MLP's depth decides which original layer is HF's proj_out
        m = _MLP_LAYER.match(key)
        if m:
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    for key in state:
        m = _POINT_EMBED.match(key)
        if m:
            points[int(m.group(1))] = np.asarray(state[key]).reshape(-1)
            continue
        new = _mlp_key(key, depth) or next((p.sub(r, key) for p, r in _ORIGINAL if p.match(key)), None)
        if new is None:
            dropped.append(key)
        else:
            out[new] = np.asarray(state[key])
    if points:
        out["prompt_encoder.point_embed.weight"] = np.stack([points[i] for i in range(len(points))])
    return out, dropped


def _mlp_key(key: str, depth: Mapping[str, int]) -> str | None:
    m = _MLP_LAYER.match(key)
    if not m:
        return None
    prefix, i, leaf = m.group(1), int(m.group(2)), m.group(3)
    for pattern, repl in _ORIGINAL_MLPS:
        if pattern.match(prefix):
            n = depth[prefix]
            name = "proj_in" if i == 0 else "proj_out" if i == n - 1 else f"layers.{i - 1}"
            return f"{pattern.sub(repl, prefix)}.{name}.{leaf}"
    return None
