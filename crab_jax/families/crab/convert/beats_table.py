"""Mapping rows of the BEATs audio encoder (keys as in a BEATs ``.pt`` file's ``model``).

Names are the torch ones; the layouts change for Linear (``[out, in]`` -> ``[in, out]``),
the patch Conv2d (OIHW -> HWIO) and the weight-normalised position Conv1d (``weight_v``
``[out, in/g, k]`` and ``weight_g`` ``[1, 1, k]`` -> ``[k, in/g, out]`` / ``[k, 1, 1]``).

The relative position table exists once (layer 0 owns it, the others alias it), but a torch
state dict lists it under every layer's name: the row is ``tied`` over the layer index, so
loading checks that all copies agree and saving writes every name back.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from crab_jax.checkpoints.convert.mapping import (
    CONV1D, CONV2D, IDENTITY, MappingTable, Rule, linear_rules, norm_rules, tied)
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.models.beats import Beats, BeatsConfig
from crab_jax.models.rngs import make_rngs
from crab_jax.models.state_dict import abstract_module, expected_shapes, load_flat


def beats_rules(cfg: BeatsConfig) -> list[Rule]:
    layer = "encoder.layers.{layer}"
    rules = [
        Rule("patch_embedding.weight", "patch_embedding.weight", CONV2D),
        Rule("patch_embedding.bias", "patch_embedding.bias", IDENTITY),
        *norm_rules("layer_norm"),
        *linear_rules("post_extract_proj"),
        Rule("encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.weight_v", CONV1D),
        Rule("encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_g", CONV1D),
        Rule("encoder.pos_conv.0.bias", "encoder.pos_conv.0.bias", IDENTITY),
        *norm_rules("encoder.layer_norm"),
        # One tensor under every layer's name; the JAX model keeps it in layer 0.
        Rule(f"{layer}.self_attn.relative_attention_bias.weight",
             "encoder.layers.0.self_attn.relative_attention_bias.weight", IDENTITY,
             tied=(tied("layer", range(cfg.encoder_layers)),)),
        Rule(f"{layer}.self_attn.grep_a", f"{layer}.self_attn.grep_a", IDENTITY),
    ]
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj", "grep_linear"):
        rules += linear_rules(f"{layer}.self_attn.{proj}")
    rules += linear_rules(f"{layer}.fc1") + linear_rules(f"{layer}.fc2")
    rules += norm_rules(f"{layer}.self_attn_layer_norm") + norm_rules(f"{layer}.final_layer_norm")
    rules += linear_rules("predictor")
    return rules


def beats_table(cfg: BeatsConfig) -> MappingTable:
    """The BEATs mapping; ``cfg`` gives the layer count the shared table is tied over."""
    return MappingTable("beats", beats_rules(cfg))


def load_beats(path, *, dtype=None):
    """A :class:`Beats` built from a BEATs ``.pt`` checkpoint (``{'cfg': ..., 'model': ...}``).

    The config comes from the file's ``cfg``; every key of ``model`` is checked against the
    model (a missing, unexpected or mis-shaped key raises ``MappingError`` naming it). The
    model is built abstractly (``nnx.eval_shape``), so no random init is computed.
    """
    tensors = open_tensors(path, subkey="model")
    if "cfg" not in getattr(tensors, "extra", {}):
        raise ValueError(f"{path}: a BEATs checkpoint must hold a 'cfg' dict next to 'model'")
    cfg = BeatsConfig.from_checkpoint_cfg(tensors.extra["cfg"])
    model = abstract_module(lambda: Beats(cfg, dtype=dtype or jnp.float32, rngs=make_rngs(0)))
    load_flat(model, beats_table(cfg).to_jax(tensors, expected_shapes(model), source=str(path)), source=str(path))
    return model
