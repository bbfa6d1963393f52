"""Which parameters train: regexes over dotted crab_jax parameter paths.

Paths are those of :func:`crab_jax.models.state_dict.flat_variables`, e.g.
``llm.model.layers.3.self_attn.q_proj.lora_B`` or ``vl_projector.visual_proj.0.weight``
(with ``scan_layers`` the layer index is absent: ``llm.model.layers.self_attn...``).
A parameter trains iff ``re.search(pattern, path)`` holds for some pattern.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from flax import nnx

from crab_jax.parallel.sharding import Buffer
from crab_jax.models.state_dict import path_str


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"config trainable: bad regex {p!r}: {e}") from e
    return out


def trainable_filter(patterns: Sequence[str]) -> Callable:
    """An NNX filter ``(path, variable) -> bool`` selecting trainable ``nnx.Param`` s."""
    compiled = compile_patterns(patterns)

    def is_trainable(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        name = path_str(path)
        return any(rx.search(name) for rx in compiled)

    return is_trainable


def weights_filter():
    """Every weight (``nnx.Param`` or torch-style buffer)."""
    return nnx.Any(nnx.Param, Buffer)


def check_patterns_match(patterns: Sequence[str], param_paths: Sequence[str]) -> None:
    """Every pattern must select at least one parameter (a typo would silently freeze a module)."""
    compiled = compile_patterns(patterns)
    unmatched = [p.pattern for p in compiled if not any(p.search(n) for n in param_paths)]
    if unmatched:
        sample = ", ".join(sorted(param_paths)[:6])
        raise ValueError(f"config trainable: pattern(s) {unmatched} match no parameter; paths look like: {sample}, ...")
    if not patterns:
        raise ValueError("config trainable: empty; nothing would train")
