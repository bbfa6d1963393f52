"""The BEATs fixture arrays of the original (``beats/beats.npz`` under CRAB_FIXTURES)."""

from __future__ import annotations

import numpy as np
import pytest


def beats_arrays(fixtures_dir):
    return np.load(fixtures_dir / "beats" / "beats.npz")


def fixture_tasks(arrays) -> list[str]:
    """Tasks with a ``<task>_waveform_segments`` array."""
    return sorted(k[: -len("_waveform_segments")] for k in arrays.files if k.endswith("_waveform_segments"))


def media_root(fixtures_dir):
    """The example media next to the fixtures (skips the test when absent)."""
    root = fixtures_dir.parent.parent / "media"
    if not root.is_dir():
        pytest.skip(f"example media not found at {root}")
    return root
