"""Append-only JSON-lines files in a run's workdir, local or on ``gs://``.

Object stores cannot append to an object: for a remote path the file's lines are kept in
memory (starting from what a previous run of the same workdir wrote) and the whole object
is rewritten at most every ``flush_every_s`` seconds and on :meth:`JsonlFile.close`. A crash
loses at most that window of metric lines; checkpoints are written by Orbax separately.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from crab_jax.io.paths import as_path, is_remote


class JsonlFile:
    def __init__(self, path, *, flush_every_s: float = 30.0):
        self.path = as_path(path)
        self.flush_every_s = float(flush_every_s)
        self._remote = is_remote(self.path)
        self._last_flush = time.monotonic()
        self._pending = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._remote:
            self._text = self.path.read_text() if self.path.exists() else ""
            self._file = None
        else:
            self._file = open(self.path, "a")

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
            return
        self._text += line
        self._pending = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if self._remote and self._pending:
            self.path.write_text(self._text)
            self._pending = False
            self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def append_line(path, record: Mapping[str, Any]) -> None:
    """One line appended now (for rare writes such as held-out evaluations)."""
    f = JsonlFile(path, flush_every_s=0.0)
    f.append(record)
    f.close()
