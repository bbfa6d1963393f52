"""Model families: :func:`get` returns the :class:`~crab_jax.families.base.Family` that the config's
``model.family`` names. Each family lives in ``crab_jax/families/<name>/`` and builds its
``FAMILY`` in ``family.py``; it is imported only when asked for, so shared code never
imports a family's modules (``tests/test_architecture.py`` checks that)."""

from __future__ import annotations

import importlib
import pkgutil

from crab_jax.families.base import Family


def names() -> tuple[str, ...]:
    """The families this installation has (sub-packages with a ``family.py``)."""
    out = []
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg and importlib.util.find_spec(f"{__name__}.{info.name}.family") is not None:
            out.append(info.name)
    return tuple(sorted(out))


def get(name: str) -> Family:
    """The family ``name`` (``model.family`` of the run config)."""
    known = names()
    if name not in known:
        raise ValueError(f"config model.family={name!r}: no such model family; known: {list(known)}")
    family = importlib.import_module(f"{__name__}.{name}.family").FAMILY
    if not isinstance(family, Family) or family.name != name:
        raise TypeError(f"crab_jax/families/{name}/family.py: FAMILY must be a Family named {name!r}")
    return family
