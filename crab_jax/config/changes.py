"""Which keys of a run config differ from the one a checkpoint was saved with.

A resumed run must compute what the saved run computed; :func:`changed_keys` lists every
difference outside :data:`crab_jax.config.schema.RESUME_SAFE_KEYS` (the keys a resume may
change). Both configs are plain JSON-ready dicts (``RunConfig.as_dict()``, what checkpoints
store). A key that one of them lacks (a checkpoint written before the key was declared, or a
key since removed) is not compared: nothing says what the older run used for it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from crab_jax.config.schema import RESUME_SAFE_KEYS


def flat_config(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"optim.grad_clip": 1.0, ...}``: every leaf of a nested config dict by its dotted key."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, name + "."))
        else:
            out[name] = value
    return out


def is_safe(key: str, safe_keys: Iterable[str] = RESUME_SAFE_KEYS) -> bool:
    """``key`` is a safe key or inside a safe section (``"eval"`` covers ``"eval.every_steps"``)."""
    return any(key == s or key.startswith(s + ".") for s in safe_keys)


def _same(a, b) -> bool:
    # JSON stores tuples as lists and may hold an int where the schema now has a float (0 vs 0.0).
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in a config
        return type(a) is type(b) and a == b
    return a == b


def changed_keys(saved: Mapping, new: Mapping, safe_keys: Iterable[str] = RESUME_SAFE_KEYS
                 ) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, saved value, new value)]`` of every compared key whose values differ, in key order."""
    safe_keys = tuple(safe_keys)
    old_flat, new_flat = flat_config(saved), flat_config(new)
    return [(k, old_flat[k], new_flat[k]) for k in sorted(set(old_flat) & set(new_flat))
            if not is_safe(k, safe_keys) and not _same(old_flat[k], new_flat[k])]
