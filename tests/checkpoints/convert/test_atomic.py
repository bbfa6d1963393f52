"""Partial outputs of killed conversions (``<out>.partial-<pid>``) are removed by the next run when
their process is gone; those of live processes are left alone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from crab_jax.checkpoints.convert.atomic import atomic_dir, process_alive


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_dead_processes_are_removed_live_ones_kept(tmp_path, caplog):
    out = str(tmp_path / "converted")
    pid = dead_pid()
    assert not process_alive(pid)
    stale = f"{out}.partial-{pid}"
    os.makedirs(os.path.join(stale, "params"))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = f"{out}.partial-{live.pid}"
        os.makedirs(alive)
        other = str(tmp_path / "converted2") + f".partial-{pid}"  # another output's: not ours to touch
        os.makedirs(other)
        with caplog.at_level(logging.WARNING, logger="crab_jax.convert"):
            with atomic_dir(out) as tmp:
                open(os.path.join(tmp, "x"), "w").close()
        assert not os.path.exists(stale) and os.path.isdir(alive) and os.path.isdir(other)
        assert os.path.isfile(os.path.join(out, "x"))
        assert [r.getMessage() for r in caplog.records if stale in r.getMessage()]
    finally:
        live.kill()
        live.wait()


def test_an_existing_output_refused_still_clears_stale_partials(tmp_path):
    out = str(tmp_path / "converted")
    os.makedirs(out)
    stale = f"{out}.partial-{dead_pid()}"
    os.makedirs(stale)
    with pytest.raises(FileExistsError):
        with atomic_dir(out):
            pass
    assert not os.path.exists(stale)
