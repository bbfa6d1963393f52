"""Helpers of the annotation reader tests."""

from __future__ import annotations

import json


def write_file(root, rel, obj):
    """Writes ``obj`` (text, or JSON of anything else) to ``root/rel``; returns the path."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path
