"""Orbax checkpoints of a training run: trainable params, optimizer state, step, RNG,
data-iterator state and the run config.

Layout (``<workdir>/checkpoints/<step>/``): ``params`` and ``opt_state`` (Orbax
``StandardSave``, sharded, restorable onto any mesh), ``meta`` (JSON: step, RNG key data,
the data iterator's ``get_state()``, the config). Frozen weights are not saved: they are
rebuilt from the seed or from the converted checkpoint named by the config.
Saves are asynchronous; only committed steps are ever restored. Directories may be local
or ``gs://`` (``etils.epath``, as Orbax uses).

A committed step that cannot be read (an array file missing or truncated, no ``_METADATA``,
a damaged ``meta``) raises :class:`CorruptCheckpoint`, one line naming the step and the array
or file; :meth:`Checkpointer.quarantine` moves such a step out of Orbax's folder (kept, never
deleted: the keep-N retention and a new save of the same step number cannot touch it).

Fault injection (crash tests): with ``CRAB_JAX_KILL_AFTER_SAVE_STEP=N`` in the environment the
process SIGKILLs itself right after the asynchronous save of step N has been scheduled (its
files are being written, nothing is committed), as a preemption without notice would.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import re
import signal
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from crab_jax.checkpoints.save_errors import install_write_error_filter, save_failure
from crab_jax.io.paths import as_path
from crab_jax.models.state_dict import flat_leaves

KILL_AFTER_SAVE_ENV = "CRAB_JAX_KILL_AFTER_SAVE_STEP"


def _handlers() -> dict:
    # Registered up front so a fresh manager can read metadata of existing steps.
    return {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()}


class CheckpointMismatch(ValueError):
    """The checkpoint cannot be restored into this run's state (different LoRA rank, shapes ...)."""


class CorruptCheckpoint(RuntimeError):
    """A committed step that cannot be read; ``step`` is it, the message names the array / file."""

    def __init__(self, directory, step: int, what: str):
        super().__init__(f"checkpoint step {step} in {directory} cannot be read: {what}")
        self.directory, self.step, self.what = directory, int(step), what


# TensorStore's read errors (an OCDBT data file missing or shorter than its manifest says):
# the array's key and the file are quoted in the message.
_TS_STATUS = re.compile(r"\b(NOT_FOUND|OUT_OF_RANGE|DATA_LOSS|FAILED_PRECONDITION|INVALID_ARGUMENT|UNKNOWN):")
_TS_ARRAY = re.compile(r'Error reading "([^"/]+)/[^"]*" in OCDBT')
_TS_FILE = re.compile(r'(?:local file|file) "([^"]+)"')


def read_error(exc: BaseException) -> str | None:
    """One line naming the array and file ``exc`` (raised while reading a step) is about, or None
    when ``exc`` is not a read failure (a mismatch, an out-of-memory ... must not be taken for a
    damaged checkpoint)."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"missing file ({text.splitlines()[0] if text else exc.filename})"
    if isinstance(exc, json.JSONDecodeError):
        return f"damaged JSON ({exc.msg} at char {exc.pos})"
    status = _TS_STATUS.search(text)
    if not isinstance(exc, (ValueError, OSError)) or status is None:
        return None
    array, files = _TS_ARRAY.search(text), _TS_FILE.findall(text)
    detail = text.split(" [tensorstore_spec", 1)[0].rsplit(": ", 1)[-1][:160]
    return (f"array {array.group(1) if array else '?'} (file {files[-1] if files else '?'}): "
            f"{status.group(1)}, {detail}")


def _dotted(path: str) -> str:
    # jax key paths of namedtuple fields print as ".name": "1.0..mu" and Orbax's "1.0.mu" alike.
    return re.sub(r"\.{2,}", ".", path)


def _flat_shapes(tree) -> dict[str, tuple[int, ...] | None]:
    return {_dotted(name): tuple(leaf.shape) if getattr(leaf, "shape", None) is not None else None
            for name, leaf in flat_leaves(tree).items()}


def _tree_problems(saved_tree, wanted_tree) -> list[str]:
    saved, wanted = _flat_shapes(saved_tree), _flat_shapes(wanted_tree)
    problems = [f"missing {k}" for k in sorted(set(wanted) - set(saved))]
    problems += [f"unexpected {k}" for k in sorted(set(saved) - set(wanted))]
    problems += [f"{k}: saved {saved[k]}, expected {wanted[k]}" for k in sorted(set(wanted) & set(saved))
                 if saved[k] is not None and saved[k] != wanted[k]]
    return problems


class Checkpointer:
    """Wraps an Orbax ``CheckpointManager`` for the train state (see the module docstring)."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())
        self._saving: int | None = None  # the step whose (asynchronous) save may still be running
        install_write_error_filter()  # a full disk: one line, not one traceback per task / thread

    @contextlib.contextmanager
    def _writing(self, step: int, last_committed: int | None):
        """Turns a failed write (disk full ...) of ``step`` into one :class:`WriteFailed` (step,
        folder, free space, the intact last committed step); other errors pass unchanged."""
        try:
            yield
        except Exception as e:
            if last_committed is None:
                last_committed = self._committed_on_disk()
            failed = save_failure(self.directory, step, e, last_committed=last_committed)
            if failed is None:
                raise
            raise failed from e

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def committed_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def _reading(self, step: int, read):
        """``read()``, its read failures as :class:`CorruptCheckpoint` (other errors unchanged)."""
        try:
            return read()
        except Exception as e:
            what = read_error(e)
            if what is None:
                raise
            raise CorruptCheckpoint(self.directory, step, what) from e

    def read_meta(self, step: int) -> dict:
        out = self._reading(step, lambda: self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())))
        if out["meta"] is None:
            raise CorruptCheckpoint(self.directory, step, "meta/metadata is empty")
        return dict(out["meta"])

    def check_compatible(self, step: int, abstract_params, model_config: Mapping[str, Any],
                         abstract_opt_state=None) -> None:
        """Raises :class:`CheckpointMismatch` before anything compiles if the saved run differs
        (LoRA sizes, the trainable params' names and shapes, the optimizer state's when
        ``abstract_opt_state`` is given), :class:`CorruptCheckpoint` if its metadata cannot be read."""
        meta = self.read_meta(step)
        saved = (meta.get("config") or {}).get("model", {}).get("lora", {})
        for key in ("r", "num_heads"):
            if key in saved and int(saved[key]) != int(model_config["lora"][key]):
                raise CheckpointMismatch(
                    f"{self.directory}/{step}: saved with model.lora.{key}={saved[key]}, this run has "
                    f"model.lora.{key}={model_config['lora'][key]}; LoRA sizes must match to resume "
                    "(use a new --workdir, or the saved value)")
        metadata = self._reading(step, lambda: self.manager.item_metadata(step))
        wanted = {"params": (abstract_params, "trainable params", "config trainable / model sizes changed?")}
        if abstract_opt_state is not None:
            wanted["opt_state"] = (abstract_opt_state, "optimizer state leaves", "config optim.* changed the optax chain?")
        for item, (tree, name, hint) in wanted.items():
            if metadata[item] is None:
                raise CorruptCheckpoint(self.directory, step, f"{item}/_METADATA is missing or unreadable")
            problems = _tree_problems(metadata[item], tree)
            if problems:
                raise CheckpointMismatch(f"{self.directory}/{step}: {name} do not match this run ({hint}):\n  "
                                         + "\n  ".join(problems[:20]))

    def save(self, step: int, state, *, data_state: Mapping | None, config_dict: Mapping, force: bool = False) -> bool:
        meta = {"step": int(step), "rng": np.asarray(jax.device_get(state.rng)).tolist(),
                "data": data_state, "config": config_dict}
        self._finish_saving()  # a failure of the previous asynchronous save is reported as that step's
        with self._writing(step, self.latest_step()):
            started = self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.JsonSave(meta)), force=force)
        self._saving = step
        if os.environ.get(KILL_AFTER_SAVE_ENV) == str(int(step)):
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection (module docstring)
        return started

    def restore(self, step: int, abstract_state, state):
        """``(state with params / opt_state / step / rng from the checkpoint, data state)``; a step
        that cannot be read raises :class:`CorruptCheckpoint`."""
        out = self._reading(step, lambda: self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
            meta=ocp.args.JsonRestore())))
        meta = out["meta"]
        rng = jax.device_put(np.asarray(meta["rng"], np.uint32), abstract_state.rng.sharding)
        step_arr = jax.device_put(np.asarray(meta["step"], np.int32), abstract_state.step.sharding)
        state = state.replace(params=out["params"], opt_state=out["opt_state"], rng=rng, step=step_arr)
        return state, meta.get("data")

    def quarantine(self, step: int, into) -> epath.Path:
        """Moves committed ``step`` to ``into/<step>-<UTC time>`` (kept as it is, out of reach of
        retention and of a new save of that step) and returns where; process 0 moves, every
        process waits for it and then no longer lists the step."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = as_path(into) / f"{int(step)}-{stamp}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(int(step))).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"crab_jax quarantine step {int(step)}")
        self.manager.reload()
        return target

    def reached_preemption(self, step: int) -> bool:
        try:
            return bool(self.manager.reached_preemption(step))
        except Exception:  # no preemption service (single process without jax.distributed)
            return False

    def _committed_on_disk(self) -> int | None:
        """The latest step committed on disk now (after a failed save: not the failed one)."""
        try:
            self.manager.reload()
            return self.manager.latest_step()
        except Exception:  # only for the error message; the save's own error is what matters
            return None

    def _finish_saving(self) -> None:
        """Waits for the save in flight; its failed write is one :class:`WriteFailed` naming its step."""
        step, self._saving = self._saving, None
        if step is None:
            self.manager.wait_until_finished()
            return
        with self._writing(step, None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self._finish_saving()
        except BaseException:
            with contextlib.suppress(Exception):
                self.manager.close()  # its own wait would raise the same failure a second time
            raise
        self.manager.close()


def restore_params(directory: str | pathlib.Path, abstract_params, step: int | None = None):
    """Trainable params only, placed by ``abstract_params``' shardings (any mesh)."""
    manager = ocp.CheckpointManager(as_path(directory), item_handlers=_handlers(),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory}: no committed checkpoint")
    out = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    manager.close()
    return out["params"]
