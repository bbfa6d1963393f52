"""One run per workdir: a live holder refuses a second run in one line, a stale lock (same host,
dead pid) is taken over with a warning, the lock goes away at the end, also on an exception."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from crab_jax.io.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLocked


@pytest.fixture
def sleeper():
    """A live process that is not this one (its pid holds the lock in the tests)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(workdir, *, host=None, pid, since="2026-01-01T00:00:00+00:00"):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "since": since}))


def test_lock_holds_host_pid_and_start_and_is_released(tmp_path):
    with WorkdirLock(tmp_path / "run") as lock:
        held = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert held["host"] == socket.gethostname() and held["pid"] == os.getpid() and held["since"]
        assert lock.held
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [], "no temporary file left"


def test_lock_is_released_on_an_exception(tmp_path):
    with pytest.raises(KeyError):
        with WorkdirLock(tmp_path):
            raise KeyError("boom")
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_holder_refuses_in_one_line_naming_it(tmp_path, sleeper):
    write_lock(tmp_path, pid=sleeper.pid, since="2026-12-02T10:00:00+00:00")
    with pytest.raises(WorkdirLocked) as info:
        WorkdirLock(tmp_path).acquire()
    msg = str(info.value)
    assert "\n" not in msg
    assert f"host {socket.gethostname()}" in msg and f"pid {sleeper.pid}" in msg and "since 2026-12-02T10:00:00" in msg
    assert "stop that run" in msg and f"remove {tmp_path / LOCK_NAME}" in msg
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == sleeper.pid, "the holder's lock is untouched"


def test_a_lock_from_another_host_is_not_judged_stale(tmp_path):
    write_lock(tmp_path, host="some-other-host", pid=dead_pid())
    with pytest.raises(WorkdirLocked, match="host some-other-host"):
        WorkdirLock(tmp_path).acquire()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    with caplog.at_level(logging.WARNING, logger="crab_jax.train"):
        with WorkdirLock(tmp_path):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert any("stale lock" in r.getMessage() and f"pid {pid}" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_unreadable_lock_refuses_naming_the_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(WorkdirLocked, match="cannot be read"):
        WorkdirLock(tmp_path).acquire()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path, sleeper):
    lock = WorkdirLock(tmp_path).acquire()
    write_lock(tmp_path, pid=sleeper.pid)  # someone removed ours by hand and started another run
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == sleeper.pid


def test_disabled_and_object_store_workdirs_take_no_lock(tmp_path, caplog):
    with WorkdirLock(tmp_path, enabled=False):
        assert not (tmp_path / LOCK_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="crab_jax.train"):
        lock = WorkdirLock("gs://bucket/run").acquire()
    assert not lock.held and any("not locked" in r.getMessage() for r in caplog.records)


def test_two_runs_taking_over_one_stale_lock_only_one_wins(tmp_path, sleeper, monkeypatch):
    """Both runs judged the same dead holder's lock stale; the first takes it over while the
    second is about to remove the stale file: the second must not remove the winner's lock."""
    import crab_jax.io.workdir_lock as module

    workdir = tmp_path / "run"
    write_lock(workdir, pid=dead_pid())
    first, second = WorkdirLock(workdir), WorkdirLock(workdir)
    first.info["pid"] = sleeper.pid  # a live run other than this process (own pid counts as stale)
    real_unlink, real_rename = os.unlink, os.rename
    raced = []

    def the_first_run_goes_first(path):
        if os.fspath(path) == os.fspath(workdir / LOCK_NAME) and not raced:
            raced.append(True)
            first.acquire()  # takes the stale lock over completely, between the second's look and act

    def unlink(path, *a, **k):
        the_first_run_goes_first(path)
        return real_unlink(path, *a, **k)

    def rename(src, dst, *a, **k):
        the_first_run_goes_first(src)
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(module.os, "unlink", unlink)
    monkeypatch.setattr(module.os, "rename", rename)
    with pytest.raises(WorkdirLocked, match=f"pid {sleeper.pid}"):
        second.acquire()
    assert raced and first.held and not second.held
    assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == sleeper.pid
    assert sorted(p.name for p in workdir.iterdir()) == [LOCK_NAME], "no stray take-over files"
