"""One training run per workdir: ``<workdir>/run.lock``.

The lock file holds JSON ``{"host", "pid", "since"}`` (``since``: UTC, ISO 8601). It is
created atomically (written to a private temporary file, then ``os.link``-ed to its name, which
fails if it exists), so a reader never sees a half-written lock. A second run on the same
workdir refuses with :class:`WorkdirLocked`, one line naming the holder and how to proceed.
A lock left by a run that died without releasing it (``kill -9``, a crash of the machine) is
stale when its host is this host and its pid is not alive (or is this very process, as after a
container restart): it is taken over with a warning (moved aside by an atomic rename first, so of
two runs taking over the same stale lock only one wins). A lock from another host cannot be checked
from here; the message says to remove it if that run is gone.

Multi-host runs: the caller takes the lock on process 0 only (the one process that writes
metrics); the others share the workdir by design.

Object stores (``gs://`` workdirs): no lock is taken (no atomic create-if-absent through
``etils.epath``); a warning says so. Launch one job per workdir there (``launch/`` names the
workdir after the job).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import uuid

from crab_jax.io.paths import as_path, is_remote

log = logging.getLogger("crab_jax.train")

LOCK_NAME = "run.lock"


class WorkdirLocked(RuntimeError):
    """Another live run holds the workdir (or its lock file cannot be read)."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds ``<workdir>/run.lock`` for the block (see the module
    docstring); ``enabled=False`` (processes other than 0) does nothing."""

    def __init__(self, workdir, *, enabled: bool = True):
        self.workdir = as_path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.enabled = enabled and not is_remote(self.workdir)
        self.remote = enabled and is_remote(self.workdir)
        self.held = False
        self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                     "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    def _create(self) -> bool:
        """Writes our lock if none exists; False when one does."""
        tmp = self.workdir / f".{LOCK_NAME}.{os.getpid()}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(self.info))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _holder(self) -> dict | None:
        """The lock file's content; None if it vanished meanwhile (its run just released it)."""
        try:
            holder = json.loads(self.path.read_text())
            if not isinstance(holder, dict) or not {"host", "pid"} <= set(holder):
                raise ValueError("no host / pid")
            return holder
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise WorkdirLocked(f"--workdir {self.workdir}: lock file {self.path} cannot be read ({e}); if no "
                                "other run uses this workdir, remove the file and rerun") from e

    def _stale(self, holder: dict) -> bool:
        if holder["host"] != self.info["host"]:
            return False
        pid = int(holder["pid"])
        return pid == os.getpid() or not pid_alive(pid)

    def _remove_stale(self, holder: dict) -> None:
        """Removes the stale lock ``holder`` (as read) unless another run replaced it meanwhile.

        Two runs may judge the same stale lock at once. Comparing the content and then unlinking
        is not atomic (the other run may take over between the look and the unlink, and its
        fresh lock would be removed), so the file is first renamed to a private name: only one
        run can move a given file. The moved file is then checked: the stale holder's content
        is deleted; a fresh lock moved by mistake is linked back (``os.link`` fails if yet
        another lock appeared, then that one stands)."""
        grave = self.workdir / f".{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:  # the other run moved it first
            return
        try:
            moved = json.loads(grave.read_text())
        except ValueError:
            moved = None
        if moved != holder:  # a fresh lock, taken over by another run between our look and the move
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        os.unlink(grave)

    def acquire(self) -> "WorkdirLock":
        if self.remote:
            log.warning("--workdir %s is an object store: not locked (run one job per workdir there)", self.workdir)
        if not self.enabled:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a holder that releases, or a stale lock taken over, between two looks
            if self._create():
                self.held = True
                return self
            holder = self._holder()
            if holder is None:
                continue
            if not self._stale(holder):
                raise WorkdirLocked(
                    f"--workdir {self.workdir} is in use by another run (host {holder['host']}, pid {holder['pid']}, "
                    f"since {holder.get('since', '?')}): stop that run, use another --workdir, or, if that run is "
                    f"gone, remove {self.path}")
            log.warning("taking over the stale lock %s of a run that is gone (host %s, pid %s, since %s)",
                        self.path, holder["host"], holder["pid"], holder.get("since", "?"))
            self._remove_stale(holder)
        raise WorkdirLocked(f"--workdir {self.workdir}: could not take the lock {self.path} (other runs keep "
                            "taking it); make sure one run uses this workdir")

    def release(self) -> None:
        """Removes the lock if it is still ours."""
        if not self.held:
            return
        self.held = False
        try:
            holder = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if holder.get("host") == self.info["host"] and holder.get("pid") == self.info["pid"]:
            os.unlink(self.path)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
