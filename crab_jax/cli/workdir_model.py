"""A trained model from a training run's workdir (``python -m crab_jax.infer --workdir`` and
``--weights WORKDIR``): the latest committed trainable weights over the frozen ones the
trainer builds (from ``seed`` or ``model.init_checkpoint``)."""

from __future__ import annotations

import logging

from crab_jax.checkpoints.run import Checkpointer, restore_params
from crab_jax.config.sections import RunConfig
from crab_jax.data.sources import DataSetup
from crab_jax.families.base import Family
from crab_jax.training.setup import build_setup, initial_state, run_model_config

log = logging.getLogger("crab_jax.infer")


def _tuples(value):
    """JSON lists back to the tuples the config sections hold."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def saved_run_config(workdir) -> dict:
    """The run config stored with the latest committed checkpoint of ``workdir``."""
    ckpt_dir = workdir / "checkpoints"
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            raise FileNotFoundError(f"{workdir}: no committed checkpoint in {ckpt_dir}")
        config = ckpt.read_meta(latest).get("config")
    finally:
        ckpt.close()
    if not config:
        raise ValueError(f"{workdir}: the checkpoint of step {latest} stores no run config")
    return with_schema_defaults(_tuples(config), source=f"{workdir} (step {latest})")


def with_schema_defaults(stored: dict, *, source: str) -> dict:
    """``stored`` (a run config saved by an earlier crab_jax) plus every key the schema declared
    since, at its default (a new key's default is the behaviour the earlier code had); logged."""
    from crab_jax.config.changes import flat_config
    from crab_jax.config.schema import get_config as schema_config

    defaults = schema_config().to_dict()
    added = sorted(set(flat_config(defaults)) - set(flat_config(stored)))

    def merge(default, saved):
        if isinstance(default, dict) and isinstance(saved, dict):
            return {**saved, **{k: merge(v, saved[k]) if k in saved else v for k, v in default.items()}}
        return saved

    if added:
        log.info("%s: its stored config predates %d key(s), taken at their defaults: %s", source, len(added),
                 ", ".join(added))
    return merge(_tuples(defaults), stored)


def load_model(run: RunConfig, family: Family, workdir, data: DataSetup):
    """``(setup, model)``: the run's model with the latest committed trainable weights of
    ``workdir/checkpoints``. Frozen weights are rebuilt as the trainer builds them (from
    ``seed``, or from ``model.init_checkpoint``): checkpoints hold the trainable ones only.
    """
    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"--workdir {workdir}: no checkpoints/ folder (train first: python -m crab_jax.train "
                                f"--config ... --workdir {workdir})")
    setup, _, _ = build_setup(run, model_cfg=run_model_config(run, family, data), steps=1)
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    latest = ckpt.latest_step()
    if latest is None:
        raise FileNotFoundError(f"--workdir {workdir}: no committed checkpoint in {ckpt_dir}")
    # Same config as the training run? (names what differs before Orbax's long tree diff)
    ckpt.check_compatible(latest, setup.abstract.params, run.as_dict()["model"])
    ckpt.close()
    log.info("weights of step %d from %s", latest, ckpt_dir)
    state = initial_state(run, setup)
    params = restore_params(ckpt_dir, setup.abstract.params, latest)
    return setup, setup.merge(params, state.frozen, state.rng_vars)
