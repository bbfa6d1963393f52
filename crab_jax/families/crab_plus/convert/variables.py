"""What a converted Crab+ checkpoint must hold: the thinker's variables, built abstractly,
split into the two parts a checkpoint may hold (``base``: the HF checkpoint's weights;
``adapter``: the I-LoRA weights of ``finetune_weights.bin``).

A checkpoint has the canonical layout (:func:`canonical_config`: one entry per layer, the
vocabulary unpadded). The model is built with ``nnx.eval_shape`` with its layers SCANNED,
then each stacked variable is named per layer through the two tables (scanned JAX path ->
torch keys -> canonical JAX path): Flax 0.12.8's ``eval_shape`` costs time quadratic in the
number of parameter initialisations (every RNG-count update walks the whole trace so far),
so the real thinker's 2,510 unscanned variables take ~100 s where the scanned build takes
0.2 s. ``tests/families/crab_plus/convert`` checks the two builds give the same variables.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
from flax import nnx

from crab_jax.families.crab_plus.convert.thinker_table import is_adapter_path, thinker_table
from crab_jax.families.crab_plus.model import CrabPlusConfig, CrabPlusThinker
from crab_jax.models.rngs import make_rngs
from crab_jax.models.state_dict import abstract_module, flat_variables

TOWERS = ("text", "vision", "audio")


def replace_towers(cfg: CrabPlusConfig, **fields) -> CrabPlusConfig:
    """``cfg`` with ``fields`` set in each of the three tower configs."""
    return dataclasses.replace(cfg, **{t: dataclasses.replace(getattr(cfg, t), **fields) for t in TOWERS})


def canonical_config(cfg: CrabPlusConfig) -> CrabPlusConfig:
    """The converter's layout of ``cfg``: layers unscanned, vocabulary unpadded (a run's
    ``scan_layers`` / ``vocab_pad_multiple`` are applied when it reads the checkpoint)."""
    cfg = replace_towers(cfg, scan_layers=False)
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_pad_multiple=1))


def model_variables(cfg: CrabPlusConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """crab_jax path -> (shape, dtype) of ``CrabPlusThinker(cfg)`` exactly as built (no allocation;
    slow for a big unscanned model, see the module docstring)."""
    module = abstract_module(lambda: CrabPlusThinker(cfg, rngs=make_rngs(0)))
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat_variables(module).items()}


@functools.lru_cache(maxsize=8)
def thinker_variables(cfg: CrabPlusConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """crab_jax path -> (shape, dtype) of every variable of ``CrabPlusThinker(canonical_config(cfg))``
    (built scanned and named per layer; nothing allocated; cached)."""
    cfg = canonical_config(cfg)
    scanned_cfg = replace_towers(cfg, scan_layers=True)
    scanned, canonical = thinker_table(scanned_cfg), thinker_table(cfg)
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for path, (shape, dtype) in model_variables(scanned_cfg).items():
        # The scanned rows stack "layer" first: that axis becomes the canonical name's index.
        per_layer = tuple(shape[1:]) if "layer" in scanned.rule_for_jax(path).stack else tuple(shape)
        for key, _ in scanned.jax_key_to_torch(path, shape):
            hit = canonical.torch_key_to_jax(key)
            if hit is None:
                raise ValueError(f"the canonical table has no row for {key!r} (scanned {path!r})")
            out.setdefault(hit[1], (per_layer, dtype))
    return out


def part_of(path: str) -> str:
    """``'adapter'`` for an I-LoRA weight, else ``'base'``."""
    return "adapter" if is_adapter_path(path) else "base"


def expected_variables(cfg: CrabPlusConfig, parts: Sequence[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The variables of ``parts`` (``'base'`` / ``'adapter'``), in the model's order."""
    return {k: v for k, v in thinker_variables(cfg).items() if part_of(k) in parts}
