"""The one check of a batch against its family's static shapes (``BatchFormat.check``)."""

from __future__ import annotations

from typing import Any, Mapping


def check_shapes(batch: Mapping[str, Any], shapes: Mapping[str, tuple[tuple[int, ...], Any]], spec: Any,
                 source: str = "batch") -> None:
    """Raises naming the first key of ``shapes`` (key -> (shape, dtype)) that ``batch`` lacks or
    holds with another shape; ``spec`` is the BatchSpec the shapes came from (for the message)."""
    for key, (shape, _) in shapes.items():
        if key not in batch:
            raise KeyError(f"{source}: missing key {key!r} (expected shape {shape})")
        if tuple(batch[key].shape) != tuple(shape):
            raise ValueError(f"{source}: {key!r} has shape {tuple(batch[key].shape)}, expected {tuple(shape)} "
                             f"from the BatchSpec {spec}")
