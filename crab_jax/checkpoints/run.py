"""Orbax checkpoints of a training run: trainable params, optimizer state, step, RNG,
data-iterator state and the run config.

Layout (``<workdir>/checkpoints/<step>/``): ``params`` and ``opt_state`` (Orbax
``StandardSave``, sharded, restorable onto any mesh), ``meta`` (JSON: step, RNG key data,
the data iterator's ``get_state()``, the config). Frozen weights are not saved: they are
rebuilt from the seed or from the converted checkpoint named by the config.
Saves are asynchronous; only committed steps are ever restored. Directories may be local
or ``gs://`` (``etils.epath``, as Orbax uses).

Fault injection (crash tests): with ``CRAB_JAX_KILL_AFTER_SAVE_STEP=N`` in the environment the
process SIGKILLs itself right after the asynchronous save of step N has been scheduled (its
files are being written, nothing is committed), as a preemption without notice would.
"""

from __future__ import annotations

import os
import pathlib
import signal
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from crab_jax.io.paths import as_path
from crab_jax.models.state_dict import flat_leaves

KILL_AFTER_SAVE_ENV = "CRAB_JAX_KILL_AFTER_SAVE_STEP"


def _handlers() -> dict:
    # Registered up front so a fresh manager can read metadata of existing steps.
    return {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()}


class CheckpointMismatch(ValueError):
    """The checkpoint cannot be restored into this run's state (different LoRA rank, shapes ...)."""


def _flat_shapes(tree) -> dict[str, tuple[int, ...] | None]:
    return {name: tuple(leaf.shape) if getattr(leaf, "shape", None) is not None else None
            for name, leaf in flat_leaves(tree).items()}


class Checkpointer:
    """Wraps an Orbax ``CheckpointManager`` for the train state (see the module docstring)."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict:
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def check_compatible(self, step: int, abstract_params, model_config: Mapping[str, Any]) -> None:
        """Raises :class:`CheckpointMismatch` before anything compiles if the saved run differs."""
        meta = self.read_meta(step)
        saved = (meta.get("config") or {}).get("model", {}).get("lora", {})
        for key in ("r", "num_heads"):
            if key in saved and int(saved[key]) != int(model_config["lora"][key]):
                raise CheckpointMismatch(
                    f"{self.directory}/{step}: saved with model.lora.{key}={saved[key]}, this run has "
                    f"model.lora.{key}={model_config['lora'][key]}; LoRA sizes must match to resume "
                    "(use a new --workdir, or the saved value)")
        metadata = self.manager.item_metadata(step)["params"]
        if metadata is None:
            raise CheckpointMismatch(f"{self.directory}/{step}: no readable metadata for 'params'")
        saved_shapes = _flat_shapes(metadata)
        wanted = _flat_shapes(abstract_params)
        problems = [f"missing {k}" for k in sorted(set(wanted) - set(saved_shapes))]
        problems += [f"unexpected {k}" for k in sorted(set(saved_shapes) - set(wanted))]
        problems += [f"{k}: saved {saved_shapes[k]}, expected {wanted[k]}" for k in sorted(set(wanted) & set(saved_shapes))
                     if saved_shapes[k] is not None and saved_shapes[k] != wanted[k]]
        if problems:
            raise CheckpointMismatch(f"{self.directory}/{step}: trainable params do not match this run "
                                     f"(config trainable / model sizes changed?):\n  " + "\n  ".join(problems[:20]))

    def save(self, step: int, state, *, data_state: Mapping | None, config_dict: Mapping, force: bool = False) -> bool:
        meta = {"step": int(step), "rng": np.asarray(jax.device_get(state.rng)).tolist(),
                "data": data_state, "config": config_dict}
        started = self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave(meta)), force=force)
        if os.environ.get(KILL_AFTER_SAVE_ENV) == str(int(step)):
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection (module docstring)
        return started

    def restore(self, step: int, abstract_state, state):
        """``(state with params / opt_state / step / rng from the checkpoint, data state)``."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
            meta=ocp.args.JsonRestore()))
        meta = out["meta"]
        rng = jax.device_put(np.asarray(meta["rng"], np.uint32), abstract_state.rng.sharding)
        step_arr = jax.device_put(np.asarray(meta["step"], np.int32), abstract_state.step.sharding)
        state = state.replace(params=out["params"], opt_state=out["opt_state"], rng=rng, step=step_arr)
        return state, meta.get("data")

    def reached_preemption(self, step: int) -> bool:
        try:
            return bool(self.manager.reached_preemption(step))
        except Exception:  # no preemption service (single process without jax.distributed)
            return False

    def close(self) -> None:
        self.manager.wait_until_finished()
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
