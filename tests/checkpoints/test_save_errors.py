"""A checkpoint save on a full disk (a monkeypatched write raising ENOSPC): one clear error naming
the step, the folder and the free space; the asynchronous failure reported once; the last committed
step intact and restorable."""

from __future__ import annotations

import errno
import logging
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from crab_jax.checkpoints.run import Checkpointer, restore_params
from crab_jax.checkpoints.save_errors import FLOODED_LOGGERS, OneWriteErrorLog, install_write_error_filter
from crab_jax.io.write_errors import WriteFailed


@struct.dataclass
class TinyState:
    params: dict
    opt_state: dict
    rng: jnp.ndarray
    step: jnp.ndarray


def tiny_state(value: float) -> TinyState:
    return TinyState(params={"w": jnp.full((4,), value)}, opt_state={"mu": jnp.zeros((4,))},
                     rng=jnp.zeros((2,), jnp.uint32), step=jnp.asarray(1, jnp.int32))


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def assert_step_1_intact(directory):
    assert Checkpointer(directory, async_save=False).latest_step() == 1
    params = restore_params(directory, {"w": jnp.zeros((4,))})
    np.testing.assert_array_equal(np.asarray(params["w"]), np.full((4,), 1.0))


def test_disk_full_during_the_save_call_is_one_error_and_the_committed_step_stays(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(1, tiny_state(1.0), data_state=None, config_dict={})
    monkeypatch.setattr(ckpt.manager, "save", disk_full)
    with pytest.raises(WriteFailed) as e:
        ckpt.save(2, tiny_state(2.0), data_state=None, config_dict={})
    message = str(e.value)
    assert e.value.errno == errno.ENOSPC and "\n" not in message
    for needle in ("checkpoint step 2", str(directory), "No space left on device", " free of ",
                   "last committed step 1 is intact"):
        assert needle in message, message
    monkeypatch.undo()
    ckpt.close()
    assert_step_1_intact(directory)


def test_a_failed_asynchronous_save_is_reported_once_naming_its_step(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory, async_save=True)
    ckpt.save(1, tiny_state(1.0), data_state=None, config_dict={})
    ckpt.manager.wait_until_finished()
    monkeypatch.setattr(ckpt.manager, "save", lambda *a, **k: True)  # scheduled; its writes fail later
    ckpt.save(2, tiny_state(2.0), data_state=None, config_dict={})

    def failed_async(*args, **kwargs):  # TensorStore's words for ENOSPC, as Orbax re-raises them
        raise ValueError("RESOURCE_EXHAUSTED: Error writing local file \"d/ocdbt.process_0/x\": "
                         "[OS error 28: No space left on device]")

    monkeypatch.setattr(ckpt.manager, "wait_until_finished", failed_async)
    with pytest.raises(WriteFailed, match=r"checkpoint step 2 .*No space left on device.*last committed step 1"):
        ckpt.close()
    monkeypatch.undo()
    assert_step_1_intact(directory)


def test_other_save_errors_pass_unchanged(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "c", async_save=False)

    def mismatch(*args, **kwargs):
        raise ValueError("tree structures do not match")

    monkeypatch.setattr(ckpt.manager, "save", mismatch)
    with pytest.raises(ValueError, match="tree structures do not match") as e:
        ckpt.save(1, tiny_state(1.0), data_state=None, config_dict={})
    assert not isinstance(e.value, WriteFailed)
    monkeypatch.undo()
    ckpt.close()


def _log_write_errors(logger, count, message):
    for _ in range(count):
        try:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device")
        except ValueError:
            logger.error(message, exc_info=sys.exc_info())


def test_write_errors_of_tasks_and_threads_are_logged_once_without_traceback(caplog, monkeypatch):
    flt = OneWriteErrorLog()
    asyncio_log, absl_log = logging.getLogger("asyncio"), logging.getLogger("absl")
    for logger in (asyncio_log, absl_log):  # a fresh count (a Checkpointer installs one per process)
        monkeypatch.setattr(logger, "filters", [flt])
    with caplog.at_level(logging.ERROR):
        _log_write_errors(asyncio_log, 50, "Task exception was never retrieved\nfuture: <Task ...>")
        # Orbax's background threads, as a real full disk logs them (tests/reliability/test_disk_full.py)
        _log_write_errors(absl_log, 4, "[process=0][thread=serialize_shardings] _SignalingThread.run() raised an exception")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            absl_log.error("Save Finalize thread (save_finalize) failed.", exc_info=sys.exc_info())
        asyncio_log.error("some other asyncio error")
        try:
            raise ValueError("tree structures do not match")
        except ValueError:
            absl_log.error("an unrelated failure", exc_info=sys.exc_info())
    records = [r for r in caplog.records if r.name in FLOODED_LOGGERS]
    assert len(records) == 3 and flt.dropped == 54, [r.getMessage() for r in records]
    assert "No space left on device" in records[0].getMessage() and records[0].exc_info is None
    assert records[2].exc_info is not None  # other errors keep their traceback
    assert "Traceback" not in caplog.text.split("an unrelated failure")[0]


def test_the_filter_is_installed_once_on_each_flooded_logger():
    flt = install_write_error_filter()
    assert install_write_error_filter() is flt
    for name in FLOODED_LOGGERS:
        assert logging.getLogger(name).filters.count(flt) == 1
