"""The torch <-> crab_jax parameter mapping engine.

A model family is described by ONE :class:`MappingTable`: a list of :class:`Rule` rows,
each pairing a torch state-dict key pattern with a crab_jax state path pattern and a
named :class:`Transform`. The same rows drive both directions, so the reverse path cannot
drift (MaxText's ``param_mapping`` idea). Patterns use ``{name}`` placeholders, e.g.::

    Rule("model.layers.{layer}.self_attn.{proj}.lora_B{head}.weight",
         "model.layers.{layer}.self_attn.{proj}.lora_B",
         LINEAR, stack=("head",))

``stack`` names placeholders that exist only on the torch side and become leading axes
of the JAX array, in order (LoRA heads, scanned layers). ``tied`` names placeholders that
exist only on the torch side and whose keys all hold the same tensor (BEATs' shared
relative-position table, BERT's word embeddings tied to the MLM decoder); each takes
exactly one of its listed values (which may contain dots), and the reverse path writes
every name.

Everything here works on numpy arrays; torch is never imported.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from crab_jax.checkpoints.convert.readers import source_file


class MappingError(ValueError):
    """A state dict does not match the model: lists every offending key."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """A named, invertible layout change between torch and JAX."""

    name: str
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


IDENTITY = Transform("identity", _identity, _identity)
# torch Linear [out, in] <-> JAX [in, out]
LINEAR = Transform("linear", lambda w: np.ascontiguousarray(w.T), lambda w: np.ascontiguousarray(w.T))
# torch Conv2d [out, in/g, kh, kw] <-> JAX HWIO [kh, kw, in/g, out]
CONV2D = Transform(
    "conv2d",
    lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
    lambda w: np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
)
# torch ConvTranspose2d [in, out/g, kh, kw] <-> JAX [kh, kw, in, out/g]
CONV_TRANSPOSE2D = Transform(
    "conv_transpose2d",
    lambda w: np.ascontiguousarray(w.transpose(2, 3, 0, 1)),
    lambda w: np.ascontiguousarray(w.transpose(2, 3, 0, 1)),
)
# torch Conv1d [out, in/g, k] <-> JAX [k, in/g, out]
CONV1D = Transform(
    "conv1d",
    lambda w: np.ascontiguousarray(w.transpose(2, 1, 0)),
    lambda w: np.ascontiguousarray(w.transpose(2, 1, 0)),
)

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _compile(pattern: str, choices: dict[str, tuple[str, ...]] | None = None) -> tuple[re.Pattern, tuple[str, ...]]:
    """``{name}`` matches one path segment, or exactly one of ``choices[name]`` (dots allowed)."""
    choices = choices or {}
    names: list[str] = []
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        if name in names:
            out.append(f"(?P={name})")
        else:
            names.append(name)
            alternatives = "|".join(re.escape(v) for v in choices[name]) if name in choices else "[^.]+"
            out.append(f"(?P<{name}>{alternatives})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$"), tuple(names)


@dataclasses.dataclass(frozen=True)
class Rule:
    torch: str
    jax: str
    transform: Transform = IDENTITY
    stack: tuple[str, ...] = ()
    tied: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ((placeholder, values), ...)

    def __post_init__(self):
        t_re, t_names = _compile(self.torch, dict(self.tied))
        j_re, j_names = _compile(self.jax)
        object.__setattr__(self, "_t", (t_re, t_names))
        object.__setattr__(self, "_j", (j_re, j_names))
        only_torch = set(t_names) - set(j_names)
        declared = set(self.stack) | {n for n, _ in self.tied}
        if only_torch != declared or set(j_names) - set(t_names):
            raise ValueError(
                f"rule {self.torch!r} <-> {self.jax!r}: placeholders only on the torch side "
                f"{sorted(only_torch)} must be exactly the stack/tied ones {sorted(declared)}"
            )

    def match_torch(self, key: str) -> dict[str, str] | None:
        m = self._t[0].match(key)
        return m.groupdict() if m else None

    def match_jax(self, key: str) -> dict[str, str] | None:
        m = self._j[0].match(key)
        return m.groupdict() if m else None

    def with_prefix(self, torch_prefix: str, jax_prefix: str) -> "Rule":
        return dataclasses.replace(self, torch=torch_prefix + self.torch, jax=jax_prefix + self.jax)


def tied(placeholder: str, values: Iterable) -> tuple[str, tuple[str, ...]]:
    return (placeholder, tuple(str(v) for v in values))


def linear_rules(torch_name: str, jax_name: str | None = None) -> list[Rule]:
    """The rows of a torch ``nn.Linear`` ``torch_name`` (weight transposed, bias copied)."""
    jax_name = torch_name if jax_name is None else jax_name
    return [Rule(f"{torch_name}.weight", f"{jax_name}.weight", LINEAR),
            Rule(f"{torch_name}.bias", f"{jax_name}.bias", IDENTITY)]


def norm_rules(name: str) -> list[Rule]:
    """The rows of a layer whose weight and bias are copied as they are (LayerNorm), same name."""
    return [Rule(f"{name}.weight", f"{name}.weight", IDENTITY), Rule(f"{name}.bias", f"{name}.bias", IDENTITY)]


class MappingTable:
    """One model family's torch <-> JAX mapping (see module docstring)."""

    def __init__(self, family: str, rules: Sequence[Rule]):
        self.family = family
        self.rules = tuple(rules)

    def __add__(self, other: "MappingTable") -> "MappingTable":
        return MappingTable(f"{self.family}+{other.family}", self.rules + other.rules)

    def with_prefix(self, torch_prefix: str, jax_prefix: str) -> "MappingTable":
        return MappingTable(self.family, [r.with_prefix(torch_prefix, jax_prefix) for r in self.rules])

    # -- key level ------------------------------------------------------------------
    def torch_key_to_jax(self, key: str) -> tuple[Rule, str, tuple[int, ...]] | None:
        """``(rule, jax_key, stack_index)`` for a torch key, or None if no row matches."""
        for rule in self.rules:
            groups = rule.match_torch(key)
            if groups is None:
                continue
            if any(groups[n] not in vals for n, vals in rule.tied):
                continue
            try:
                index = tuple(int(groups[n]) for n in rule.stack)
            except ValueError:
                continue
            return rule, rule.jax.format(**groups), index
        return None

    def jax_key_to_torch(self, key: str, shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
        """Every ``(torch_key, stack_index)`` that a JAX leaf of ``shape`` is written to."""
        for rule in self.rules:
            groups = rule.match_jax(key)
            if groups is None:
                continue
            out = []
            for index in np.ndindex(*shape[: len(rule.stack)]):
                g = dict(groups, **{n: str(i) for n, i in zip(rule.stack, index)})
                combos = [g]
                for name, values in rule.tied:
                    combos = [dict(c, **{name: v}) for c in combos for v in values]
                out.extend((rule.torch.format(**c), tuple(index)) for c in combos)
            return out
        raise MappingError(f"[{self.family}] no mapping row for crab_jax parameter {key!r}")

    def unmatched_jax(self, keys: Iterable[str]) -> list[str]:
        """The crab_jax parameter names no row matches, in order (``inspect``)."""
        return [k for k in keys if not any(rule.match_jax(k) is not None for rule in self.rules)]

    def rule_for_jax(self, key: str) -> Rule:
        for rule in self.rules:
            if rule.match_jax(key) is not None:
                return rule
        raise MappingError(f"[{self.family}] no mapping row for crab_jax parameter {key!r}")

    # -- tensor level -----------------------------------------------------------------
    def to_jax(
        self,
        torch_state: Mapping[str, np.ndarray],
        expected: Mapping[str, tuple[tuple[int, ...], np.dtype]] | None = None,
        *,
        source: str = "state dict",
    ) -> dict[str, np.ndarray]:
        """Maps a torch state dict (numpy values) to flat crab_jax paths.

        ``expected`` (path -> (shape, dtype)) is the model's abstract state; with it, any
        unexpected, missing or mis-shaped key raises :class:`MappingError` naming each key.
        Values are read one key at a time, so a lazy mapping streams.
        """
        problems: list[str] = []
        parts: dict[str, dict[tuple[int, ...], tuple[str, np.ndarray]]] = {}
        rules: dict[str, Rule] = {}
        first_key: dict[str, str] = {}  # jax key -> a torch key that filled it (to name its file)

        def where(tkey: str) -> str:  # " (in FILE)" when the reader knows which file held tkey
            f = source_file(torch_state, tkey)
            return f" (in {f})" if f else ""

        for tkey in torch_state.keys():
            hit = self.torch_key_to_jax(tkey)
            if hit is None:
                problems.append(f"unexpected key {tkey!r}{where(tkey)} (no row of the {self.family} mapping matches it)")
                continue
            rule, jkey, index = hit
            value = rule.transform.to_jax(np.asarray(torch_state[tkey]))
            rules[jkey] = rule
            first_key.setdefault(jkey, tkey)
            slot = parts.setdefault(jkey, {})
            if index in slot:  # a tied copy: must hold the same tensor
                other_key, other = slot[index]
                if other.shape != value.shape or not np.array_equal(other, value):
                    problems.append(f"tied keys {other_key!r}{where(other_key)} and {tkey!r}{where(tkey)} "
                                    "hold different tensors")
                continue
            slot[index] = (tkey, value)

        out: dict[str, np.ndarray] = {}
        for jkey in list(parts):
            slot = parts.pop(jkey)  # dropped as it is stacked: each leaf is held once, not twice
            rule = rules[jkey]
            if not rule.stack:
                out[jkey] = slot[()][1]
                continue
            counts = tuple(max(i[d] for i in slot) + 1 for d in range(len(rule.stack)))
            if expected is not None and jkey in expected:
                # The model's shape says how many there must be: a missing LAST layer/head
                # is then named like any other missing key.
                want = tuple(expected[jkey][0][: len(rule.stack)])
                counts = tuple(max(c, w) for c, w in zip(counts, want))
            missing = [i for i in np.ndindex(*counts) if i not in slot]
            if missing:
                names = [rule.torch.format(**self._example_groups(rule, jkey, i)) for i in missing]
                problems.extend(f"missing key {n!r} (needed to stack {jkey!r})" for n in names)
                continue
            first = next(iter(slot.values()))[1]
            bad = [(k, v.shape) for k, v in slot.values() if v.shape != first.shape]
            if bad:
                problems.extend(f"key {k!r}{where(k)} has shape {s}, its siblings {first.shape}" for k, s in bad)
                continue
            stacked = np.empty(counts + first.shape, first.dtype)
            for i, (_, v) in slot.items():
                stacked[i] = v
            out[jkey] = stacked

        if expected is not None:
            for jkey, (shape, dtype) in expected.items():
                if jkey not in out:
                    torch_names = [k for k, _ in self.jax_key_to_torch(jkey, shape)]
                    problems.append(
                        f"missing key {torch_names[0]!r}"
                        + (f" (+{len(torch_names) - 1} more)" if len(torch_names) > 1 else "")
                        + f": expected shape {tuple(self._torch_shape(jkey, shape))} for {jkey!r}"
                    )
                elif tuple(out[jkey].shape) != tuple(shape):
                    rule = rules[jkey]
                    got = out[jkey].shape
                    problems.append(
                        f"shape mismatch for {jkey!r} (torch {rule.torch!r}){where(first_key[jkey])}: expected "
                        f"{tuple(self._torch_shape(jkey, shape))}, found "
                        f"{tuple(self._torch_shape(jkey, got))} (torch layout)"
                    )
            for jkey in sorted(set(out) - set(expected)):
                problems.append(f"unexpected parameter {jkey!r}: the model has no such parameter")
        if problems:
            raise MappingError(f"{source}: {len(problems)} problem(s) loading into {self.family}:\n  "
                               + "\n  ".join(problems))
        return out

    def to_torch(self, jax_flat: Mapping[str, np.ndarray], *, tied_names: str = "all") -> dict[str, np.ndarray]:
        """Maps flat crab_jax paths back to torch keys and layouts.

        ``tied_names='first'`` writes a tied tensor under its first name only (how Crab's
        ``.bin`` files store shared tensors); ``'all'`` writes every name (a full state dict).
        """
        out: dict[str, np.ndarray] = {}
        for jkey, value in jax_flat.items():
            value = np.asarray(value)
            rule = self.rule_for_jax(jkey)
            seen_index = set()
            for tkey, index in self.jax_key_to_torch(jkey, value.shape):
                if tied_names == "first" and index in seen_index:
                    continue
                seen_index.add(index)
                out[tkey] = rule.transform.to_torch(value[index] if index else value)
        return out

    # -- helpers ------------------------------------------------------------------------
    def _example_groups(self, rule: Rule, jkey: str, index) -> dict[str, str]:
        g = dict(rule.match_jax(jkey))
        g.update({n: str(i) for n, i in zip(rule.stack, index)})
        g.update({n: vals[0] for n, vals in rule.tied})
        return g

    def _torch_shape(self, jkey: str, shape) -> tuple[int, ...]:
        rule = self.rule_for_jax(jkey)
        inner = tuple(shape[len(rule.stack):])
        try:
            return tuple(rule.transform.to_torch(np.empty(inner, np.float32)).shape)
        except Exception:  # a transform that cannot invert this shape: report as-is
            return inner
