"""Append-only JSON-lines files in a run's workdir, local or on ``gs://``.

Object stores cannot append to an object: for a remote path the file's lines are kept in
memory (starting from what a previous run of the same workdir wrote) and the whole object
is rewritten at most every ``flush_every_s`` seconds and on :meth:`JsonlFile.close`. A crash
loses at most that window of metric lines; checkpoints are written by Orbax separately.

Opening repairs what a killed or disk-full run left: a torn last line (no newline, or not JSON)
is cut off with one warning naming the file, and with ``keep_through_step=S`` (a run resumed
from step S) the rows of later steps, which the resumed run writes again, are dropped, so the
file keeps one row per step. A failed write raises :class:`~crab_jax.io.write_errors.WriteFailed`
(what, where, free space) once; the file is closed, and the next open repairs it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

from crab_jax.io.paths import as_path, is_remote
from crab_jax.io.write_errors import WriteFailed

log = logging.getLogger("crab_jax.io")


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _row_step(line: str) -> int | None:
    """The ``step`` of one complete JSON line (None: no step, or not a JSON object)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) else None


def repaired_text(text: str, *, keep_through_step: int | None, name: str) -> str:
    """``text`` without a torn last line and (with ``keep_through_step``) without rows of later steps;
    logs one warning per kind of repair, naming ``name`` (the file)."""
    complete, _, tail = text.rpartition("\n")  # tail: what follows the last newline (a torn write)
    lines = complete.split("\n") if complete else []
    if not tail and lines and not _parses(lines[-1]):
        tail = lines.pop()  # complete but not JSON: a torn write that got a newline later
    if tail:
        log.warning("%s: removed a torn last line (%d bytes: %r...) left by an interrupted write",
                    name, len(tail), tail[:40])
    if keep_through_step is not None:
        kept = [line for line in lines if (_row_step(line) or 0) <= keep_through_step]
        if len(kept) < len(lines):
            log.info("%s: dropped %d row(s) past step %d (the resumed run writes those steps again)",
                     name, len(lines) - len(kept), keep_through_step)
        lines = kept
    return "".join(line + "\n" for line in lines)


class JsonlFile:
    def __init__(self, path, *, flush_every_s: float = 30.0, keep_through_step: int | None = None):
        """``keep_through_step``: the step a run resumes from; rows of later steps are dropped."""
        self.path = as_path(path)
        self.flush_every_s = float(flush_every_s)
        self._remote = is_remote(self.path)
        self._last_flush = time.monotonic()
        self._pending = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = self.path.read_text() if self.path.exists() else ""
        text = repaired_text(old, keep_through_step=keep_through_step, name=str(self.path))
        if self._remote:
            self._text = text
            self._pending = text != old
            self._file = None
            return
        if text != old:
            self._rewrite_local(text)
        self._file = open(self.path, "a")

    def _rewrite_local(self, text: str) -> None:
        """Replaces the file's contents with ``text`` atomically (a crash keeps the old or the new)."""
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise WriteFailed.of("repairing", self.path, e) from e

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        if self._file is not None:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as e:
                self._abandon()
                raise WriteFailed.of("appending a line to", self.path, e) from e
            return
        if not self._remote:
            raise ValueError(f"{self.path}: append after close or after a failed write")
        self._text += line
        self._pending = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def _abandon(self) -> None:
        """Closes the file after a failed write without flushing its buffer again (that would raise
        the same error a second time); what reached the disk is repaired by the next open."""
        f, self._file = self._file, None
        try:
            f.close()
        except OSError:
            pass

    def flush(self) -> None:
        if self._remote and self._pending:
            try:
                self.path.write_text(self._text)
            except OSError as e:
                raise WriteFailed.of("writing", self.path, e) from e
            self._pending = False
            self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError as e:
                raise WriteFailed.of("closing", self.path, e) from e


def repair_file(path, *, keep_through_step: int | None) -> None:
    """Repairs ``path`` now as opening it would (torn last line, rows past ``keep_through_step``);
    for files written rarely (held-out evaluations) that a resumed run may not open for a while."""
    if as_path(path).exists():
        JsonlFile(path, flush_every_s=0.0, keep_through_step=keep_through_step).close()


def append_line(path, record: Mapping[str, Any]) -> None:
    """One line appended now (for rare writes such as held-out evaluations)."""
    f = JsonlFile(path, flush_every_s=0.0)
    f.append(record)
    f.close()
