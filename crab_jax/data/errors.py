"""The one error type of the data path: a record or media file that cannot be used.

The input pipeline counts and skips these (one bad clip must not stop a training run);
everything else (a bug, a missing annotation folder in strict mode) propagates.
"""

from __future__ import annotations

import os


class BadRecordError(ValueError):
    """A record, annotation file or media file that cannot be turned into a sample.

    Attributes:
      path: the file at fault (annotation file, label file or media file), as given.
      reason: what is wrong with it, in words (``"0-byte file"``, ``"missing field 'vid'"``).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason))
