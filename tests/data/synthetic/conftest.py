"""The synthetic dataset the tests of this folder read (generated once per test session)."""

from __future__ import annotations

import pathlib

import pytest

from tests.data.synthetic.media_checks import generate_small


@pytest.fixture(scope="package")
def dataset(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("synthetic_seed0")
    generate_small(root, 0)
    return root


@pytest.fixture(scope="package")
def dataset_again(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("synthetic_seed0_again")
    generate_small(root, 0)
    return root
