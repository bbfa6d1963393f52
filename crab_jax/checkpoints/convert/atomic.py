"""Atomic outputs: a converter's file or directory appears only when it is complete.

Everything goes to ``<out>.partial-<pid>`` and is renamed to ``<out>`` on success; on any
error the partial output is removed, so a failure leaves nothing half-written at ``<out>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator


def _partial_path(out, overwrite: bool) -> tuple[str, str]:
    """``(absolute out, its temporary sibling)``; refuses an existing ``out`` unless ``overwrite``."""
    out = os.path.abspath(os.fspath(out))
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
