"""The training loop: the side-effect edge around the pure train step.

Builds the run from the config (mesh, model, sharded state), resumes from the latest
committed checkpoint of ``<workdir>/checkpoints``, feeds batches, logs metrics from
process 0, checkpoints every ``checkpoint.every_steps`` and on SIGTERM / preemption, and
stops on the first non-finite loss / gradient / parameter without writing it.
"""

from __future__ import annotations

import logging
import math
import pathlib
import signal
import time
from typing import Iterator

import jax
import numpy as np

from crab_jax.checkpointing import Checkpointer, config_to_dict, load_converted_weights
from crab_jax.data.batch_spec import BatchSpec, check_batch, make_random_batches
from crab_jax.mesh import check_global_batch, make_mesh, rules_from_config
from crab_jax.metrics import llm_flops_per_token, mfu, peak_flops_per_device, summarize
from crab_jax.trainer.metric_writer import MetricWriter
from crab_jax.trainer.model_config import crab_config_from
from crab_jax.trainer.optimizer import make_optimizer
from crab_jax.trainer.state import TrainSetup, make_setup
from crab_jax.trainer.step import batch_shardings, first_non_finite, jit_train_step, make_train_step, trainable_names

log = logging.getLogger("crab_jax.train")


class NonFiniteError(FloatingPointError):
    """The step produced a non-finite value; nothing of it was checkpointed."""


def total_steps(config) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    per_epoch = math.ceil(int(config.data.num_examples) / int(config.train.global_batch))
    return int(config.train.epochs) * per_epoch


def batch_spec(config, crab_cfg, per_process_batch: int) -> BatchSpec:
    return BatchSpec(batch=per_process_batch, seq_len=int(config.data.seq_len),
                     frame_slots=int(config.data.frame_slots), audio_slots=int(config.data.audio_slots),
                     fbank_frames=int(config.data.fbank_frames), image_size=crab_cfg.clip.vision.image_size)


def make_data_iterator(config, spec: BatchSpec, crab_cfg) -> Iterator[dict]:
    """The config's data source for this process (``random`` here; ``grain`` is the data pipeline's)."""
    if config.data.source == "random":
        seed = config.seed * 1000 + jax.process_index()
        return make_random_batches(spec, crab_cfg, seed, num_distinct=int(config.data.num_distinct),
                                   tasks=tuple(config.data.tasks))
    if config.data.source == "grain":
        try:
            from crab_jax.data import pipeline  # HOOK: the Grain pipeline (another work item)
        except ImportError as e:
            raise NotImplementedError("config data.source='grain' needs crab_jax.data.pipeline "
                                      "(make_train_iterator(config, spec, crab_cfg)), not installed yet") from e
        return pipeline.make_train_iterator(config, spec, crab_cfg)
    raise ValueError(f"config data.source={config.data.source!r}; known: random, grain")


def to_global(batch: dict, shardings: dict) -> dict:
    """This process's rows -> global arrays split over the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k])) for k in shardings}


class _Preemption:
    """SIGTERM sets a flag; the loop saves and leaves at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _merge_dicts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if k in out and isinstance(v, dict) else v
    return out


def _take_like(full: dict, like: dict) -> dict:
    return {k: _take_like(full[k], v) if isinstance(v, dict) else full[k] for k, v in like.items()}


def build_setup(config) -> tuple[TrainSetup, int, int]:
    """Validates sizes and builds the run's static setup (nothing compiled yet)."""
    crab_cfg = crab_config_from(config.model)
    mesh = make_mesh(dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor))
    micro = check_global_batch(int(config.train.global_batch), int(config.train.micro_batches), mesh)
    if config.train.global_batch % jax.process_count():
        raise ValueError(f"config train.global_batch={config.train.global_batch} is not divisible by the "
                         f"{jax.process_count()} processes")
    steps = total_steps(config)
    tx, schedule = make_optimizer(config.optim, steps)
    setup = make_setup(crab_cfg, patterns=tuple(config.trainable), tx=tx, schedule=schedule, mesh=mesh,
                       rules=rules_from_config(config.mesh.rules), seed=int(config.seed),
                       param_dtype=config.model.param_dtype, frozen_param_dtype=config.model.frozen_param_dtype)
    return setup, steps, micro


def train(config, workdir: str | pathlib.Path, *, data_iter: Iterator[dict] | None = None) -> list[dict]:
    """Runs (or resumes) training; returns the metrics of the steps this call ran."""
    workdir = pathlib.Path(workdir)
    setup, steps, _ = build_setup(config)
    crab_cfg = setup.crab_cfg
    if setup.uneven:
        log.warning("kept whole along dims the mesh does not divide: %s", "; ".join(setup.uneven[:10]))
    ckpt = Checkpointer(workdir / "checkpoints", keep=int(config.checkpoint.keep),
                        async_save=bool(config.checkpoint.async_save))
    config_dict = config_to_dict(config)
    latest = ckpt.latest_step()
    if latest is not None:  # before anything compiles: a resume that cannot work fails now
        ckpt.check_compatible(latest, setup.abstract.params, config_dict["model"])

    spec = batch_spec(config, crab_cfg, int(config.train.global_batch) // jax.process_count())
    if data_iter is None:
        data_iter = make_data_iterator(config, spec, crab_cfg)
    n_mask = len(crab_cfg.mask_token_ids)
    global_shapes = {k: (int(config.train.global_batch),) + s[1:] for k, (s, _) in spec.shapes(n_mask).items()}
    step_fn = jit_train_step(setup, make_train_step(
        setup, micro_batches=int(config.train.micro_batches), with_seg=bool(config.model.seg_branch),
        num_tasks=len(config.data.tasks), router_groups=int(config.metrics.router_layer_groups)), global_shapes)

    state = setup.init_fn()
    if latest is not None:
        state, data_state = ckpt.restore(latest, setup.abstract, state)
        if data_state is not None and hasattr(data_iter, "set_state"):
            data_iter.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, latest)
    elif config.model.init_checkpoint:
        full = load_converted_weights(config.model.init_checkpoint,
                                      _merge_dicts(setup.abstract.frozen, setup.abstract.params))
        state = state.replace(params=_take_like(full, setup.abstract.params),
                              frozen=_take_like(full, setup.abstract.frozen))

    names = trainable_names(setup)
    shardings = batch_shardings(global_shapes, setup.mesh)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=bool(config.metrics.tensorboard))
    flops_tok = llm_flops_per_token(crab_cfg, int(config.data.seq_len), setup.trainable_paths)
    peak = peak_flops_per_device(float(config.metrics.peak_flops_per_device))
    start = int(jax.device_get(state.step))
    stop_after = int(config.train.stop_after_steps)
    history: list[dict] = []
    bar = None
    if config.metrics.progress_bar and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    step = start
    try:
        with _Preemption() as preempt:
            while step < steps:
                local = next(data_iter)
                check_batch(local, spec, n_mask, source="data iterator")
                batch = to_global(local, shardings)
                t0 = time.perf_counter()
                state, aux = step_fn(state, batch)
                aux = jax.device_get(aux)
                dt = time.perf_counter() - t0
                bad = first_non_finite(aux, names)
                if bad is not None:
                    raise NonFiniteError(f"step {step + 1}: non-finite {bad}; stopping without a checkpoint "
                                         f"(last committed: {ckpt.latest_step()})")
                step += 1
                # Real (non-padding) tokens; other processes' rows are assumed alike.
                tokens = float(np.asarray(local["attention_mask"]).sum()) * jax.process_count()
                metrics = summarize(aux, tuple(config.data.tasks))
                metrics.update(step=step, step_time_s=dt, tokens_per_s=tokens / dt)
                u = mfu(flops_tok, tokens, dt, jax.device_count(), peak)
                if u is not None:
                    metrics["mfu"] = u
                history.append(metrics)
                if step % int(config.metrics.log_every) == 0 or step == steps:
                    writer.write(step, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
                data_state = data_iter.get_state() if hasattr(data_iter, "get_state") else None
                leaving = preempt.requested or ckpt.reached_preemption(step) or (
                    stop_after > 0 and step - start >= stop_after)
                if step % int(config.checkpoint.every_steps) == 0 or step == steps or leaving:
                    ckpt.save(step, state, data_state=data_state, config_dict=config_dict, force=True)
                if leaving:
                    log.warning("leaving at step %d (checkpoint saved)", step)
                    break
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
        writer.close()
    return history
