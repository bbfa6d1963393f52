"""One clear error for a failed write (disk full, quota, read-only): what failed, where, how much
space was free there."""

from __future__ import annotations

import errno
import os
import shutil

from crab_jax.io.paths import is_remote


def free_space(path) -> str:
    """``"12.3 MiB free of 1.0 GiB on <mount>"`` for the file system holding ``path`` (its nearest
    existing folder), or ``""`` for an object store or when it cannot be told."""
    if is_remote(path):
        return ""
    folder = os.path.abspath(os.fspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return ""
    return f"{_mib(usage.free)} free of {_mib(usage.total)} under {folder}"


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class WriteFailed(OSError):
    """A write that failed, said in one line: ``what path: reason (free space)``; ``errno`` kept."""

    @classmethod
    def of(cls, what: str, path, error: BaseException) -> "WriteFailed":
        code = getattr(error, "errno", None)
        reason = os.strerror(code) if code else f"{type(error).__name__}: {error}"
        if code == errno.ENOSPC:
            reason += " (disk full: free space, or choose another workdir)"
        free = free_space(path)
        return cls(code or errno.EIO, f"{what} {path} failed: {reason}" + (f"; {free}" if free else ""))

    def __str__(self) -> str:
        return self.strerror
