"""Mapping of Hugging Face CLIP vision weights (``vision_model.*``) onto ``ClipVisionTower``.

The same table reads a ``CLIPVisionModel`` checkpoint (Crab's ``clip_vision/`` folder) and
the vision half of a full ``CLIPModel`` checkpoint (the released
``openai/clip-vit-large-patch14``): :func:`split_clip_vision_keys` first sets aside, with a
reason, every key that is not part of the vision tower (text tower, contrastive heads,
the ``position_ids`` buffer of older exports); nothing is dropped silently, and a key that
is neither known-ignored nor mapped makes the table raise.

Crab's own state-dict names put the tower under a prefix; use
``clip_table(cfg).with_prefix("base_model.model.model.visual_encoder.vision_tower.",
"<jax path of the tower>.")``.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from crab_jax.checkpoints.convert.mapping import CONV2D, MappingTable, Rule, linear_rules, norm_rules
from crab_jax.checkpoints.convert.readers import KeySubset
from crab_jax.models.clip import ClipVisionConfig

# Keys of a full CLIPModel checkpoint that the vision tower does not use, by prefix / name.
_IGNORED_PREFIXES = (
    ("text_model.", "ignored: text tower"),
)
_IGNORED_KEYS = {
    "text_projection.weight": "ignored: text tower (text_projection of the contrastive head)",
    "visual_projection.weight": "ignored: contrastive head (visual_projection is not part of "
                                "CLIPVisionModel; Crab uses hidden states)",
    "logit_scale": "ignored: contrastive head (logit_scale)",
    # transformers < 4.31 saved this arange as a persistent buffer; it is rebuilt, never loaded.
    "vision_model.embeddings.position_ids": "ignored: position_ids buffer (arange, not a weight)",
}


def split_clip_vision_keys(keys: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """``(vision_keys, ignored)``: ``ignored`` maps each set-aside key to its reason.

    Every key not known to be ignorable goes to ``vision_keys``, so an unknown key still
    reaches the mapping table and is reported there.
    """
    vision, ignored = [], {}
    for key in keys:
        reason = _IGNORED_KEYS.get(key)
        if reason is None:
            reason = next((r for p, r in _IGNORED_PREFIXES if key.startswith(p)), None)
        if reason is None:
            vision.append(key)
        else:
            ignored[key] = reason
    return vision, ignored


def _layer_rules() -> list[Rule]:
    rules = []
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rules += linear_rules(f"self_attn.{proj}")
    for fc in ("fc1", "fc2"):
        rules += linear_rules(f"mlp.{fc}")
    for norm in ("layer_norm1", "layer_norm2"):
        rules += norm_rules(norm)
    return rules


def clip_table(cfg: ClipVisionConfig) -> MappingTable:
    """Rows for exactly ``cfg.num_hidden_layers`` layers, so a deeper checkpoint's extra
    layers are reported under their torch names."""
    vm = "vision_model."
    rules = [
        Rule(vm + "embeddings.class_embedding", vm + "embeddings.class_embedding"),
        Rule(vm + "embeddings.patch_embedding.weight", vm + "embeddings.patch_embedding.weight", CONV2D),
        Rule(vm + "embeddings.position_embedding.weight", vm + "embeddings.position_embedding.weight"),
    ]
    for norm in ("pre_layrnorm", "post_layernorm"):
        rules += norm_rules(vm + norm)
    for i in range(cfg.num_hidden_layers):
        prefix = f"{vm}encoder.layers.{i}."
        rules += [r.with_prefix(prefix, prefix) for r in _layer_rules()]
    return MappingTable("clip_vision", rules)


def clip_vision_to_jax(
    torch_state: Mapping[str, np.ndarray],
    cfg: ClipVisionConfig,
    expected=None,
    *,
    source: str = "CLIP checkpoint",
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A ``CLIPVisionModel`` or full ``CLIPModel`` state dict -> (flat tower arrays, ignored keys).

    ``expected`` (``crab_jax.models.state_dict.expected_shapes(tower)``) turns on the
    missing / unexpected / mis-shaped checks.
    """
    vision_keys, ignored = split_clip_vision_keys(torch_state.keys())
    vision_state = KeySubset(torch_state, vision_keys)
    return clip_table(cfg).to_jax(vision_state, expected, source=source), ignored


