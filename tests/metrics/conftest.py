"""The original's metric fixture (``$CRAB_FIXTURES/metrics``): expected.json, metrics.npz, inputs/."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="session")
def metrics_dir(fixtures_dir):
    return fixtures_dir / "metrics"


@pytest.fixture(scope="session")
def expected(metrics_dir) -> dict:
    with open(metrics_dir / "expected.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def arrays(metrics_dir) -> dict[str, np.ndarray]:
    with np.load(metrics_dir / "metrics.npz") as z:
        return {k: z[k] for k in z.files}
