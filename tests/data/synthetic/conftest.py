"""The synthetic dataset the tests of this folder read (generated once per test session)."""

from __future__ import annotations

import pathlib

import pytest

from crab_jax.data.synthetic import scenes
from tests.data.synthetic.media_checks import ALL_TASKS_TEST, ALL_TASKS_TRAIN, generate_small


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


@pytest.fixture(scope="package")
def dataset_all_tasks(tmp_path_factory) -> pathlib.Path:
    """Every generator task (``ks`` too, which only the AVUIE_2 layout has), a few samples each."""
    root = tmp_path_factory.mktemp("synthetic_all_tasks")
    generate_small(root, 0, num_train=ALL_TASKS_TRAIN, num_test=ALL_TASKS_TEST, tasks=scenes.ALL_TASKS)
    return root
