"""Atomic outputs: a converter's file or directory appears only when it is complete.

Everything goes to ``<out>.partial-<pid>`` and is renamed to ``<out>`` on success; on any
error the partial output is removed, so a failure leaves nothing half-written at ``<out>``.
A process killed mid-way (kill -9, out of memory) cannot remove its partial output: the next
conversion to the same ``<out>`` removes every ``<out>.partial-<pid>`` whose process is gone
(logging each) and leaves those of live processes alone.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
from typing import Iterator

log = logging.getLogger("crab_jax.convert")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_partials(out: str) -> list[str]:
    """Removes ``<out>.partial-<pid>`` files / folders of dead processes; returns what it removed."""
    removed = []
    for path in glob.glob(glob.escape(out) + ".partial-*"):
        m = re.fullmatch(re.escape(out) + r"\.partial-(\d+)", path)
        if m is None or int(m.group(1)) == os.getpid() or process_alive(int(m.group(1))):
            continue
        log.warning("removing %s: the partial output of conversion process %s, which is no longer running",
                    path, m.group(1))
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        removed.append(path)
    return removed


def _partial_path(out, overwrite: bool) -> tuple[str, str]:
    """``(absolute out, its temporary sibling)``; refuses an existing ``out`` unless ``overwrite``;
    removes the partial outputs of dead earlier conversions to ``out``."""
    out = os.path.abspath(os.fspath(out))
    remove_stale_partials(out)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return out, f"{out}.partial-{os.getpid()}"


@contextlib.contextmanager
def atomic_dir(out: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary sibling of ``out``; on success it replaces ``out``, on error it is removed."""
    out, tmp = _partial_path(out, overwrite)
    if os.path.exists(tmp):
        shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out):
        old = f"{out}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    else:
        os.rename(tmp, out)


@contextlib.contextmanager
def atomic_file(out: str, *, overwrite: bool = False) -> Iterator[str]:
    """Like :func:`atomic_dir` for one file."""
    out, tmp = _partial_path(out, overwrite)
    try:
        yield tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, out)
