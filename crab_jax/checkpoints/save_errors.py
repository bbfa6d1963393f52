"""A checkpoint save that fails for lack of space (or another write error): one clear error, once.

Orbax writes a step into a temporary folder and commits it by renaming, so a failed save leaves
every committed step as it was; what the user needs is one line saying which step failed, where
and how much space was free. The asynchronous part fails inside TensorStore's asyncio tasks: each
unretrieved task logs "Task exception was never retrieved" with its traceback (thousands of lines
on a full disk), while the same error reaches us once, through ``wait_until_finished`` or the
next ``save``; Orbax's background threads log the same error again through absl, each with its
traceback. :class:`OneWriteErrorLog` keeps the first of those log records and counts the rest.
"""

from __future__ import annotations

import errno
import logging

from crab_jax.io.write_errors import WriteFailed

# errno values of a write that cannot succeed by retrying, and TensorStore's words for them.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
_WRITE_TEXTS = ("No space left on device", "RESOURCE_EXHAUSTED", "Disk quota exceeded", "Read-only file system")


def _write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write anywhere in ``exc``'s cause chain, or None when it is not one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None)
        if code in _WRITE_ERRNOS:
            return code
        text = str(exc)
        if any(t in text for t in _WRITE_TEXTS):
            return errno.EROFS if "Read-only" in text else errno.EDQUOT if "quota" in text else errno.ENOSPC
        exc = exc.__cause__ or exc.__context__
    return None


def save_failure(directory, step: int, exc: BaseException, *, last_committed: int | None) -> WriteFailed | None:
    """``exc`` (raised by saving ``step`` under ``directory``) as one :class:`WriteFailed` naming the
    step, the folder, the free space and the last committed step, or None when it is no write error."""
    code = _write_errno(exc)
    if code is None:
        return None
    failed = WriteFailed.of(f"saving checkpoint step {int(step)} under", directory, OSError(code, str(exc)))
    kept = f"; the last committed step {last_committed} is intact" if last_committed is not None else ""
    return WriteFailed(code, failed.strerror + kept)


class OneWriteErrorLog(logging.Filter):
    """On the ``asyncio`` and ``absl`` loggers: lets the first log record of a failed checkpoint
    write through, in one line without its traceback (the error is raised once, with its own
    message), and drops the rest, counting them in ``dropped``. Such records are asyncio's "Task
    exception was never retrieved" (one per TensorStore task) and Orbax's background-thread errors
    ("_SignalingThread.run() raised an exception", "Save Finalize thread failed", ...), logged
    through absl with the write error attached."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    @property
    def dropped(self) -> int:
        return max(0, self.seen - 1)

    @staticmethod
    def _write_error_record(record: logging.LogRecord) -> bool:
        if "exception was never retrieved" in record.getMessage():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return _write_errno(exc) is not None
        return record.levelno >= logging.ERROR and any(t in record.getMessage() for t in _WRITE_TEXTS)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._write_error_record(record):
            return True
        self.seen += 1
        if self.seen > 1:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        reason = str(exc) if exc is not None else record.getMessage()
        record.msg = "an asynchronous checkpoint write failed: %s (further such messages are not shown)"
        record.args = (" ".join(reason.split())[:300],)
        record.exc_info = record.exc_text = None
        return True


# The loggers a failed save floods: asyncio (TensorStore's tasks), absl (Orbax's threads).
FLOODED_LOGGERS = ("asyncio", "absl")


def install_write_error_filter() -> OneWriteErrorLog:
    """Adds one :class:`OneWriteErrorLog` to each of FLOODED_LOGGERS (once per process; one shared
    count) and returns it."""
    loggers = [logging.getLogger(name) for name in FLOODED_LOGGERS]
    for logger in loggers:
        for f in logger.filters:
            if isinstance(f, OneWriteErrorLog):
                return f
    f = OneWriteErrorLog()
    for logger in loggers:
        logger.addFilter(f)
    return f
