"""``python -m crab_jax.data.prepare``: an annotation file that cannot be read whole is refused in
one line (exit status 2) before anything is decoded, unless ``data.skip_bad_files``."""

from __future__ import annotations

import dataclasses

import pytest

from crab_jax import families
from crab_jax.cli.prepare import records_or_exit
from crab_jax.config.command_line import USAGE_EXIT
from crab_jax.config.schema import get_config
from crab_jax.config.sections import RunConfig
from crab_jax.data.records.crab import annotation_path
from tests.data.pipeline.crab_data import TASKS, make_dataset

TRUNCATED = annotation_path("avqa", "train")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("prepare_truncated"))
    text = (root / TRUNCATED).read_text()
    (root / TRUNCATED).write_text(text[:len(text) // 2])
    return root


def _run(root, **data_keys) -> RunConfig:
    run = RunConfig.from_config(get_config())
    return run.replace(data=dataclasses.replace(run.data, source="avuie", path=str(root), tasks=TASKS, **data_keys))


def test_an_unreadable_annotation_file_is_refused_in_one_line(root, capsys):
    with pytest.raises(SystemExit) as e:
        records_or_exit(families.get("crab"), str(root), _run(root), "train")
    assert e.value.code == USAGE_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and TRUNCATED in err and "skip_bad_files" in err


def test_skip_bad_files_prepares_the_other_files(root):
    records, _ = records_or_exit(families.get("crab"), str(root), _run(root, skip_bad_files=True), "train")
    tasks = {r.task for r in records}
    assert tasks == set(TASKS) - {"avqa"}
