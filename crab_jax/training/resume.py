"""Resuming a run from ``<workdir>/checkpoints``: which committed step, and whether this run
may continue it.

:meth:`Resume.choose` (before anything compiles) takes the newest committed step whose
``meta`` and array metadata read, and checks it against this run: its stored run config on
every key outside :data:`crab_jax.config.schema.RESUME_SAFE_KEYS` (one line per changed key,
``old -> new``; :class:`ConfigChanged` unless ``train.allow_config_change``, which logs each
line as a warning), then the trainable params' and optimizer state's names and shapes
(:class:`~crab_jax.checkpoints.run.CheckpointMismatch`). :meth:`Resume.restore` reads it.

A step that cannot be read (:class:`~crab_jax.checkpoints.run.CorruptCheckpoint`, at either
stage) is, with ``checkpoint.fallback_on_corrupt`` (the default), moved to
``<workdir>/corrupt_checkpoints/`` with a warning naming the step and the array / file, and
the previous committed step is tried; without it, the run stops with that one line. Every
process takes the same decision (a read failure on one process counts for all).
"""

from __future__ import annotations

import json
import logging

from crab_jax.checkpoints.run import CheckpointMismatch, Checkpointer, CorruptCheckpoint
from crab_jax.config.changes import changed_keys
from crab_jax.config.sections import RunConfig
from crab_jax.io.workdir_lock import WorkdirLocked
from crab_jax.parallel.multihost import any_process

log = logging.getLogger("crab_jax.train")

QUARANTINE_DIR = "corrupt_checkpoints"


class ConfigChanged(CheckpointMismatch):
    """This run's config differs from the checkpoint's on keys that change the computation or the state."""


# Why a run refuses to start or resume; each message is the whole story (the command prints it, no traceback).
REFUSALS = (WorkdirLocked, CheckpointMismatch, CorruptCheckpoint)


def config_change_lines(saved: dict, new: dict) -> list[str]:
    """``["seed: 0 -> 1", ...]``: one line per compared key whose value differs (JSON values)."""
    return [f"{key}: {json.dumps(old)} -> {json.dumps(value)}" for key, old, value in changed_keys(saved, new)]


def check_config(saved: dict | None, new: dict, *, allow: bool, where: str) -> None:
    """Raises :class:`ConfigChanged` listing every changed key (or, with ``allow``, logs them)."""
    lines = config_change_lines(saved or {}, new)
    if not lines:
        return
    if allow:
        for line in lines:
            log.warning("resuming %s with a changed config (train.allow_config_change=True): %s", where, line)
        return
    raise ConfigChanged(
        f"{where}: this run's config differs from the one it was saved with, on keys that change the "
        "computation or the train state:\n  " + "\n  ".join(lines) + "\nresume with the saved values, use a new "
        "--workdir, or set --config.train.allow_config_change=True (keys safe to change on resume: "
        "crab_jax/config/schema.py RESUME_SAFE_KEYS)")


class Resume:
    """The resume decisions of one run (see the module docstring).

    ``abstract``: the run's abstract :class:`~crab_jax.training.state.TrainState`;
    ``config_dict``: ``run.as_dict()`` (what checkpoints store)."""

    def __init__(self, ckpt: Checkpointer, workdir, run: RunConfig, config_dict: dict, abstract):
        self.ckpt, self.workdir, self.abstract, self.config_dict = ckpt, workdir, abstract, config_dict
        self.fallback = bool(run.checkpoint.fallback_on_corrupt)
        self.allow_change = bool(run.train.allow_config_change)

    def _agreed(self, step: int, read):
        """``read()``; a :class:`CorruptCheckpoint` on any process raises one on every process."""
        error = None
        try:
            out = read()
        except CorruptCheckpoint as e:
            error, out = e, None
        if any_process(error is not None):
            raise error or CorruptCheckpoint(self.ckpt.directory, step, "unreadable on another process")
        return out

    def _check(self, step: int) -> None:
        meta = self._agreed(step, lambda: self.ckpt.read_meta(step))
        check_config(meta.get("config"), self.config_dict, allow=self.allow_change,
                     where=f"{self.ckpt.directory}/{step}")
        self._agreed(step, lambda: self.ckpt.check_compatible(step, self.abstract.params, self.config_dict["model"],
                                                              self.abstract.opt_state))

    def _fall_back(self, error: CorruptCheckpoint) -> None:
        earlier = [s for s in self.ckpt.committed_steps() if s < error.step]
        if not self.fallback:
            raise CorruptCheckpoint(error.directory, error.step, error.what + (
                f"; set --config.checkpoint.fallback_on_corrupt=True to resume from step {earlier[-1]}"
                if earlier else "")) from error
        moved = self.ckpt.quarantine(error.step, self.workdir / QUARANTINE_DIR)
        if not earlier:
            raise CorruptCheckpoint(error.directory, error.step, error.what + f"; it was moved to {moved} and no "
                                    "earlier committed step is left (start again with a new --workdir)") from error
        log.warning("%s; moved it to %s (kept) and resuming from the previous committed step %d",
                    error, moved, earlier[-1])

    def choose(self) -> int | None:
        """The step to resume from (None: a fresh run); raises before anything compiles."""
        while self.ckpt.committed_steps():
            step = self.ckpt.committed_steps()[-1]
            try:
                self._check(step)
                return step
            except CorruptCheckpoint as e:
                self._fall_back(e)
        return None

    def restore(self, step: int, state):
        """``(step, state, data state)`` from committed ``step``, or from an earlier one if it cannot be read."""
        while True:
            try:
                restored, data_state = self._agreed(step, lambda: self.ckpt.restore(step, self.abstract, state))
                return step, restored, data_state
            except CorruptCheckpoint as e:
                self._fall_back(e)
            step = self.choose()
