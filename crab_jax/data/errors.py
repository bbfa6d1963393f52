"""The error types of the data path: a record or media file that cannot be used, and a whole
annotation file that cannot be read.

The input pipeline counts and skips bad records (one bad clip must not stop a training run);
a whole annotation file that cannot be read loses every record of it, so a run fails on it
at start-up unless ``data.skip_bad_files`` says to train without it
(:func:`crab_jax.data.sources.split_file_errors`); everything else (a bug, a missing
annotation folder in strict mode) propagates.
"""

from __future__ import annotations

import copy
import os


class BadRecordError(ValueError):
    """A record, annotation file or media file that cannot be turned into a sample.

    Attributes:
      path: the file at fault (annotation file, label file or media file), as given.
      reason: what is wrong with it, in words (``"0-byte file"``, ``"missing field 'vid'"``).
      task: the task whose record it is, when the code that found it knows (None otherwise).
    """

    def __init__(self, path: str | os.PathLike, reason: str, *, task: str | None = None):
        self.path = os.fspath(path)
        self.reason = reason
        self.task = task
        super().__init__(f"{self.path}: {reason}")

    def with_task(self, task: str) -> "BadRecordError":
        """A copy of this error naming ``task`` (readers tag what their task loop collected)."""
        out = copy.copy(self)
        out.task = task
        return out

    def __reduce__(self):  # picklable across worker processes, subclasses' attributes included
        return (type(self), (self.path, self.reason), dict(self.__dict__))


class BadFileError(BadRecordError):
    """A whole annotation file that cannot be read: missing, not UTF-8, invalid or truncated
    JSON / CSV, or not a list of entries. Unlike a bad entry it loses every record of the file.

    Attributes (besides :class:`BadRecordError`'s):
      line, column: where the parser stopped (1-based), None when it is no parse error.
      entries: complete entries before the parse error (the records lost are at least these;
        None when not knowable: a missing file, a file that is no list).
    """

    def __init__(self, path: str | os.PathLike, reason: str, *, task: str | None = None,
                 line: int | None = None, column: int | None = None, entries: int | None = None):
        super().__init__(path, reason, task=task)
        self.line, self.column, self.entries = line, column, entries

    def lost(self) -> str:
        """What skipping the file loses, in words: ``"whole file"`` or ``"whole file, >= N entries"``."""
        return "whole file" if self.entries is None else f"whole file, >= {self.entries} entries"


def as_file_error(e: BadRecordError, task: str | None = None) -> BadFileError:
    """``e`` as a :class:`BadFileError` (a reader that lost a whole file through it), tagged with ``task``."""
    out = e if isinstance(e, BadFileError) else BadFileError(e.path, e.reason, task=e.task)
    return out.with_task(task) if task is not None else out


class UnreadableAnnotationsError(ValueError):
    """Annotation files a run cannot read while ``data.skip_bad_files`` is off (the message
    names each file, what is wrong and where, and the key that skips them)."""
