"""Crab+'s ``finetune_weights.bin``: the I-LoRA weights, read lazily, checked, written back.

The original's training saves every ``named_parameters()`` entry of the PEFT thinker whose
name contains ``lora_`` (``torch.save`` of a flat dict)::

    base_model.model.<thinker module path>.lora_A.weight        [r, in]
    base_model.model.<thinker module path>.lora_B{h}.weight     [out, r]   h = 0 .. heads-1
    base_model.model.<thinker module path>.lora_route.weight    [heads, in]

and its inference loads it with ``strict=False``, so a file for another model loads silently
into a wrong one. Here the rank and head count are read from the shapes (:func:`adapter_layout`,
every module must agree) and compared with what the model is told (:func:`layout_problems`:
a file for another rank or head count says which); the keys are then checked one by one
against the model (:func:`.thinker_table.check_torch_shapes`).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Mapping

import numpy as np

from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.writers import save_torch_bin
from crab_jax.models.ilora import ILoRAConfig

ADAPTER_FILE = "finetune_weights.bin"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B(?P<head>\d+)|lora_route)\.weight$")


@dataclasses.dataclass(frozen=True)
class AdapterLayout:
    """What an adapter file's shapes say: rank ``r``, ``heads`` B heads, ``modules`` adapted linears."""

    r: int
    heads: int
    modules: int


def adapter_layout(shapes: Mapping[str, tuple[int, ...]], *, source: str) -> AdapterLayout:
    """The rank and head count of an adapter file (key -> shape), which every module must share.

    Raises :class:`MappingError` naming the keys when the file holds no I-LoRA weight, when its
    modules disagree (each value and an example key with its shape), or when a module's B
    heads are not ``0 .. heads-1``.
    """
    ranks: dict[int, list[str]] = defaultdict(list)
    routes: dict[int, list[str]] = defaultdict(list)
    heads_of: dict[str, set[int]] = defaultdict(set)
    for key, shape in shapes.items():
        m = _LORA_KEY.match(key)
        if m is None or len(shape) != 2:
            continue  # not an adapter weight: the key-by-key check names it
        module, kind = m.group("module"), m.group("kind")
        if kind == "lora_A":
            ranks[shape[0]].append(key)
        elif kind == "lora_route":
            routes[shape[0]].append(key)
        else:
            heads_of[module].add(int(m.group("head")))
            ranks[shape[1]].append(key)
    if not ranks:
        raise MappingError(f"{source}: no I-LoRA weight in it (expected keys like "
                           f"'base_model.model.<module>.lora_A.weight'; {len(shapes)} keys)")
    problems = []
    if len(ranks) > 1:
        problems.append("its modules have different ranks: " + _examples(ranks, shapes, "rank"))
    head_counts: dict[int, list[str]] = defaultdict(list)
    for module, heads in heads_of.items():
        if heads != set(range(len(heads))):
            problems.append(f"{module}: B heads {sorted(heads)} (expected lora_B0 .. lora_B{len(heads) - 1})")
        head_counts[len(heads)].append(f"{module}.lora_B0.weight")
    for count, keys in routes.items():
        head_counts.setdefault(count, []).extend(keys)
    if len(head_counts) > 1:
        problems.append("its modules have different head counts (lora_B count / lora_route rows): "
                        + ", ".join(f"{n} heads ({keys[0]!r}, +{len(keys) - 1} more)" for n, keys in
                                    sorted(head_counts.items())))
    if problems:
        raise MappingError(f"{source}: not one I-LoRA adapter:\n  " + "\n  ".join(problems))
    (r,), (heads,) = ranks, head_counts
    return AdapterLayout(r=r, heads=heads, modules=len(heads_of))


def _examples(by_value: Mapping[int, list[str]], shapes, word: str) -> str:
    return ", ".join(f"{word} {v} ({keys[0]!r} {tuple(shapes[keys[0]])}, +{len(keys) - 1} more)"
                     for v, keys in sorted(by_value.items()))


def layout_problems(layout: AdapterLayout, lora: ILoRAConfig, *, r_from: str, heads_from: str) -> list[str]:
    """How the file's layout differs from the model's I-LoRA (empty: it fits); each line names
    where the model's value came from (``r_from`` / ``heads_from``: an option or a config file)."""
    out = []
    if layout.r != lora.r:
        out.append(f"the file is an adapter of rank {layout.r}, the model's I-LoRA has rank {lora.r} ({r_from})")
    if layout.heads != lora.num_heads:
        out.append(f"the file's adapters have {layout.heads} heads, the model's I-LoRA has {lora.num_heads} "
                   f"({heads_from})")
    return out


def save_adapter(path: str, state: Mapping[str, np.ndarray], *, overwrite: bool = False) -> None:
    """``torch.save`` of ``state`` (torch names -> arrays) at ``path``, atomically."""
    save_torch_bin(path, state, overwrite=overwrite)
