"""A checkpoint save that fails for lack of space (or another write error): one clear error, once.

Orbax writes a step into a temporary folder and commits it by renaming, so a failed save leaves
every committed step as it was; what the user needs is one line saying which step failed, where
and how much space was free. The asynchronous part fails inside TensorStore's asyncio tasks: each
unretrieved task logs "Task exception was never retrieved" with its traceback (thousands of lines
on a full disk), while the same error reaches us once, through ``wait_until_finished`` or the
next ``save``. :class:`OneAsyncioTaskError` keeps the first of those log records and counts the rest.
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


class OneAsyncioTaskError(logging.Filter):
    """On the ``asyncio`` logger: lets the first "Task exception was never retrieved" record through
    (without its traceback: the error is raised once, with its own message) and drops the rest,
    counting them in ``dropped``."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    @property
    def dropped(self) -> int:
        return max(0, self.seen - 1)

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage():
            return True
        self.seen += 1
        if self.seen > 1:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "an asynchronous checkpoint write failed: %s (further such messages are not shown)"
        record.args = (" ".join(str(exc).split())[:300] if exc is not None else "?",)
        record.exc_info = record.exc_text = None
        return True


def install_asyncio_filter() -> OneAsyncioTaskError:
    """Adds one :class:`OneAsyncioTaskError` to the ``asyncio`` logger (once per process) and returns it."""
    logger = logging.getLogger("asyncio")
    for f in logger.filters:
        if isinstance(f, OneAsyncioTaskError):
            return f
    f = OneAsyncioTaskError()
    logger.addFilter(f)
    return f
