"""Mapping rows of Crab's segmentation module (``SegModule``), keys relative to the module.

The crab_jax attribute names are the torch ones, so every row maps a key to itself and only
picks the layout transform: Linear weights (also the packed ``in_proj_weight`` of
``nn.MultiheadAttention``, kept packed) transpose, Conv2d → HWIO, ConvTranspose2d →
``[kh, kw, in, out]``, everything else (norms, biases, embeddings, the two Fourier buffers)
is copied. Rows are size-independent (levels, layers and indices are placeholders).

The two ``positional_encoding_gaussian_matrix`` buffers are in no file Crab's training
saves (its save functions collect parameters only); :func:`seg_buffer_keys` lists them for a
loader that must keep the constructor's draw when they are absent.
"""

from __future__ import annotations

from crab_jax.checkpoints.convert.mapping import CONV2D, CONV_TRANSPOSE2D, IDENTITY, LINEAR, MappingTable, Rule

# (torch key pattern, transform); the JAX path is the same pattern.
_ROWS = (
    # prompt projection: Sequential(Linear, ReLU, Linear, Dropout) inside a ModuleList
    ("text_hidden_fcs.0.{i}.weight", LINEAR),
    ("text_hidden_fcs.0.{i}.bias", IDENTITY),
    ("no_mask_embed.weight", IDENTITY),
    # neck: Conv1x1, LayerNorm2d, Conv3x3, LayerNorm2d (conv rows first: first match wins)
    ("image_feature_neck.0.weight", CONV2D),
    ("image_feature_neck.2.weight", CONV2D),
    ("image_feature_neck.{i}.weight", IDENTITY),
    ("image_feature_neck.{i}.bias", IDENTITY),
    ("pe_layer.positional_encoding_gaussian_matrix", IDENTITY),
    ("mask_decoder.pe1.positional_encoding_gaussian_matrix", IDENTITY),
    # two-way transformers, one per level
    ("mask_decoder.transformer.{level}.layers.{layer}.{attn}.{proj}.weight", LINEAR),
    ("mask_decoder.transformer.{level}.layers.{layer}.{attn}.{proj}.bias", IDENTITY),
    ("mask_decoder.transformer.{level}.layers.{layer}.{norm}.weight", IDENTITY),
    ("mask_decoder.transformer.{level}.layers.{layer}.{norm}.bias", IDENTITY),
    ("mask_decoder.transformer.{level}.final_attn_token_to_image.{proj}.weight", LINEAR),
    ("mask_decoder.transformer.{level}.final_attn_token_to_image.{proj}.bias", IDENTITY),
    ("mask_decoder.transformer.{level}.norm_final_attn.weight", IDENTITY),
    ("mask_decoder.transformer.{level}.norm_final_attn.bias", IDENTITY),
    # query generator (nn.MultiheadAttention, packed in_proj kept packed)
    ("mask_decoder.query_generator.layers.{layer}.{attn}.in_proj_weight", LINEAR),
    ("mask_decoder.query_generator.layers.{layer}.{attn}.in_proj_bias", IDENTITY),
    ("mask_decoder.query_generator.layers.{layer}.{attn}.out_proj.weight", LINEAR),
    ("mask_decoder.query_generator.layers.{layer}.{attn}.out_proj.bias", IDENTITY),
    ("mask_decoder.query_generator.layers.{layer}.ffn.{i}.weight", LINEAR),
    ("mask_decoder.query_generator.layers.{layer}.ffn.{i}.bias", IDENTITY),
    ("mask_decoder.query_generator.layers.{layer}.{norm}.weight", IDENTITY),
    ("mask_decoder.query_generator.layers.{layer}.{norm}.bias", IDENTITY),
    # mask head
    ("mask_decoder.avs_query_tokens.weight", IDENTITY),
    ("mask_decoder.level_embed.weight", IDENTITY),
    ("mask_decoder.hyper_mlp.layers.{i}.weight", LINEAR),
    ("mask_decoder.hyper_mlp.layers.{i}.bias", IDENTITY),
    ("mask_decoder.hyper_mlp_out.layers.{i}.weight", CONV2D),
    ("mask_decoder.hyper_mlp_out.layers.{i}.bias", IDENTITY),
    # Sequential(ConvTranspose2d, LayerNorm2d, GELU)
    ("mask_decoder.{up}.0.weight", CONV_TRANSPOSE2D),
    ("mask_decoder.{up}.0.bias", IDENTITY),
    ("mask_decoder.{up}.1.weight", IDENTITY),
    ("mask_decoder.{up}.1.bias", IDENTITY),
    ("mask_decoder.ms3_s4_classfier.weight", CONV2D),
    ("mask_decoder.avss_classifier.weight", CONV2D),
)

_BUFFERS = (
    "pe_layer.positional_encoding_gaussian_matrix",
    "mask_decoder.pe1.positional_encoding_gaussian_matrix",
)


def seg_rules(torch_prefix: str = "", jax_prefix: str = "") -> list[Rule]:
    return [Rule(p, p, t).with_prefix(torch_prefix, jax_prefix) for p, t in _ROWS]


def seg_table(cfg=None) -> MappingTable:
    """The ``SegModule`` table. ``cfg`` (a ``SegConfig``) is accepted for symmetry with the
    other tables; the rows do not depend on sizes."""
    del cfg
    return MappingTable("seg_module", seg_rules())


def seg_buffer_keys(torch_prefix: str = "") -> tuple[str, ...]:
    """Torch names of the buffers that Crab's user weight files do not carry."""
    return tuple(torch_prefix + k for k in _BUFFERS)
