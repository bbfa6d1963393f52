"""A real full disk during training: the workdir on a 3 MiB tmpfs holds one checkpoint of the tests'
small run, so a later save fails inside TensorStore's and Orbax's background writers.

What the user sees must be one line (the step that failed, the folder, the free space, the intact
last committed step) with no traceback and at most one log line for the asynchronous failure;
nothing committed is lost; ``metrics.jsonl`` has no torn line; after space is freed the same command
resumes from the last committed step and logs every step exactly once.

Needs a tmpfs mount (root with CAP_SYS_ADMIN, as on the development machine); skipped elsewhere
(the monkeypatched ENOSPC of tests/checkpoints/test_save_errors.py runs everywhere).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.checkpoints.test_run import STEPS, cli_env, committed_steps
from tests.train_helpers import REPO

TINY_FS = "3m"  # the tests' small run writes ~1.5 MiB per checkpoint: the second save cannot fit
ROOMY_FS = "256m"

# The training command's own error handling (crab_jax.train.train_or_exit) on the tests' small config.
_TRAIN = r"""
import sys
from tests.checkpoints.test_run import FAST, declared
from tests.train_helpers import small_config
from crab_jax.train import train_or_exit
train_or_exit(small_config(**declared(FAST)), sys.argv[1])
"""


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = _mount(["-t", "tmpfs", "-o", f"size={TINY_FS}", "tmpfs", str(mnt)])
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _train(workdir, cache_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _TRAIN, str(workdir)], cwd=REPO, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.heavy  # two training subprocesses on a mounted tmpfs: minutes on 2 cores (-m heavy)
def test_a_full_disk_is_one_line_and_the_rerun_resumes_with_one_row_per_step(tiny_fs, tmp_path):
    workdir, cache_dir = tiny_fs / "run", tmp_path / "jax_cache"  # the compile cache off the tiny disk
    full = _train(workdir, cache_dir)
    assert full.returncode != 0, "the run must fail when its disk is full"
    err_lines = full.stderr.strip().splitlines()
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    assert sum("asynchronous checkpoint write failed" in line for line in err_lines) <= 1, full.stderr[-3000:]
    last = err_lines[-1]
    assert last.startswith("error: ") and "No space left on device" in last and " free of " in last, last
    committed = committed_steps(workdir)
    if "saving checkpoint step" in last:
        assert (f"the last committed step {committed[-1]} is intact" if committed else "") in last, last
    rows = (workdir / "metrics.jsonl").read_text().splitlines() if (workdir / "metrics.jsonl").exists() else []
    for row in rows[:-1]:
        json.loads(row)  # only the last line may be torn (by the full disk), the rerun repairs it

    assert _mount(["-o", f"remount,size={ROOMY_FS}", str(tiny_fs)]).returncode == 0
    again = _train(workdir, cache_dir)
    assert again.returncode == 0, again.stderr[-4000:]
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), steps
    assert committed_steps(workdir)[-1] == STEPS
    assert set(committed) <= set(committed_steps(workdir)), "a committed step was lost"
