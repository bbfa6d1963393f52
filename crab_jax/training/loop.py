"""The training loop: the side-effect edge around the pure train step.

Resolves the data (for ``synthetic``: generates the dataset and builds its tokenizer on first
use, :mod:`crab_jax.data.sources`), builds the run from the config (mesh, model with the
tokenizer's vocabulary, sharded state), resumes from the latest committed checkpoint of
``<workdir>/checkpoints`` (weights and the data iterator's position), feeds batches (one
compiled step per bucket of the Grain pipeline), logs metrics and pipeline counters from
process 0, evaluates on the held-out split every ``eval.every_steps`` and at the end
(:mod:`crab_jax.evaluation.heldout`), checkpoints every ``checkpoint.every_steps`` and on
SIGTERM / preemption, and stops on the first non-finite loss / gradient / parameter without
writing it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import signal
import time
from typing import Iterator

import jax
import numpy as np
from etils import epath

from crab_jax.checkpoints.run import Checkpointer, config_to_dict
from crab_jax.checkpoints.converted import initial_weights
from crab_jax.families.crab.batch_spec import BatchSpec, check_batch, make_random_batches
from crab_jax.parallel.mesh import check_global_batch, make_mesh, rules_from_config
from crab_jax.training.metrics import llm_flops_per_token, mfu, peak_flops_per_device, summarize
from crab_jax.io.paths import as_path
from crab_jax.data.sources import (RECORD_SOURCES, DataSetup, data_specs, make_data_iterator, prepare_data, single_threaded_blas,
                                         with_base_vocab)
from crab_jax.evaluation.heldout import append_eval_jsonl, evaluate_state, format_results
from crab_jax.training.metric_writer import MetricWriter
from crab_jax.families.crab.run_config import crab_config_from
from crab_jax.training.optimizer import make_optimizer
from crab_jax.training.state import TrainSetup, make_setup
from crab_jax.training.step import batch_shardings, first_non_finite, jit_train_step, make_train_step, trainable_names

log = logging.getLogger("crab_jax.train")


class NonFiniteError(FloatingPointError):
    """The step produced a non-finite value; nothing of it was checkpointed."""


def total_steps(config, data_iter=None) -> int:
    """``train.num_steps``, else ``train.epochs`` epochs of the data iterator (or of ``data.num_examples``)."""
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    per_epoch = getattr(data_iter, "batches_per_epoch", None)
    if per_epoch is None:
        per_epoch = math.ceil(int(config.data.num_examples) / int(config.train.global_batch))
    return int(config.train.epochs) * int(per_epoch)


def run_crab_config(config, data: DataSetup | None = None):
    """The run's CrabConfig: the ``model`` section, with the tokenizer's base vocabulary when
    ``model.base_vocab = -1`` (an explicit ``model.base_vocab`` wins). Without ``data``, a records
    source is resolved first (for ``synthetic``: the dataset and tokenizer are made if missing)."""
    crab_cfg = crab_config_from(config.model)
    base = int(config.model.base_vocab)
    if base < 0 and config.data.source in RECORD_SOURCES:
        data = data if data is not None else prepare_data(config, progress=False)
        base = data.base_vocab if data.base_vocab is not None else -1
    return with_base_vocab(crab_cfg, base if base > 0 else None)


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


def initial_state(config, setup: TrainSetup):
    """The state before any resume: the seed's weights, then ``model.init_checkpoint`` and
    ``model.init_from_runs`` (:func:`crab_jax.checkpoints.converted.initial_weights`). With a converted
    checkpoint, which must hold every frozen weight, the frozen ones are never drawn at random."""
    if config.model.init_checkpoint:
        state, frozen = setup.init_trainable_fn(), setup.abstract.frozen
    else:
        state = setup.init_fn()
        frozen = state.frozen
    params, frozen, notes = initial_weights(config.model, setup, state.params, frozen)
    for note in notes:
        log.info("%s", note)
    return state.replace(params=params, frozen=frozen)


def build_setup(config, *, crab_cfg=None, steps: int | None = None, devices=None) -> tuple[TrainSetup, int, int]:
    """Validates sizes and builds the run's static setup (nothing compiled yet).

    ``crab_cfg`` defaults to :func:`run_crab_config`; ``steps`` (the schedule's length) to
    :func:`total_steps` without a data iterator; ``devices`` (the mesh's) to every device of the
    run (``crab_jax.training.aot`` passes a TPU slice's compile-only devices).
    """
    crab_cfg = crab_cfg if crab_cfg is not None else run_crab_config(config)
    devices = list(jax.devices() if devices is None else devices)
    mesh = make_mesh(dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor), devices)
    micro = check_global_batch(int(config.train.global_batch), int(config.train.micro_batches), mesh)
    processes = len({d.process_index for d in devices})
    if config.train.global_batch % processes:
        raise ValueError(f"config train.global_batch={config.train.global_batch} is not divisible by the "
                         f"{processes} processes (hosts)")
    steps = int(steps) if steps is not None else total_steps(config)
    tx, schedule = make_optimizer(config.optim, steps)
    setup = make_setup(crab_cfg, patterns=tuple(config.trainable), tx=tx, schedule=schedule, mesh=mesh,
                       rules=rules_from_config(config.mesh.rules), seed=int(config.seed),
                       param_dtype=config.model.param_dtype, frozen_param_dtype=config.model.frozen_param_dtype)
    setup.init_fn = quick_compiled_init(setup.init_fn)
    setup.init_trainable_fn = quick_compiled_init(setup.init_trainable_fn)
    return setup, steps, micro


# XLA:CPU options for the one-off initialiser: it runs once and its output is exact integer /
# elementwise work, but the default LLVM pipeline spends ~25 s optimising the hundreds of
# per-weight RNG ops of even a tiny Crab. Every caller of build_setup (trainer, infer) uses it,
# so the frozen weights rebuilt from the seed are the same everywhere.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def quick_compiled_init(init_fn):
    """``init_fn`` (a jitted function of no arguments), compiled on first call with
    :data:`CPU_INIT_COMPILER_OPTIONS` when the backend is the CPU (unchanged elsewhere)."""
    if jax.default_backend() != "cpu":
        return init_fn
    compiled = []

    def init():
        if not compiled:
            compiled.append(init_fn.lower().compile(compiler_options=CPU_INIT_COMPILER_OPTIONS))
        return compiled[0]()

    return init


@dataclasses.dataclass
class RunResult:
    """What :func:`run_training` did.

    Attributes:
      history: metrics of every step this call ran (``loss``, ``step``, ...).
      evals: ``(step, {"task/metric": {mean, n, chance?}})`` of every held-out evaluation.
      workdir: the run folder; ``tensorboard_dir`` its TensorBoard logs (None when off).
      data: the resolved data section (dataset root, tokenizer).
    """

    history: list[dict]
    evals: list[tuple[int, dict]]
    workdir: epath.Path
    tensorboard_dir: epath.Path | None
    data: DataSetup | None


def data_stats_metrics(data_iter) -> dict:
    """The pipeline's counters as flat ``data/...`` scalars (empty for iterators without stats)."""
    if not hasattr(data_iter, "stats"):
        return {}
    stats = data_iter.stats()
    return {f"data/{k}": v for k, v in stats.items() if isinstance(v, (int, float))}


def train(config, workdir: str | pathlib.Path, *, data_iter: Iterator[dict] | None = None) -> list[dict]:
    """Runs (or resumes) training; returns the metrics of the steps this call ran."""
    return run_training(config, workdir, data_iter=data_iter).history


def run_training(config, workdir: str | pathlib.Path, *, data_iter: Iterator[dict] | None = None) -> RunResult:
    """Runs (or resumes) training with held-out evaluation (see the module docstring)."""
    with single_threaded_blas():
        return _run_training(config, workdir, data_iter)


def _run_training(config, workdir: str | pathlib.Path, data_iter: Iterator[dict] | None) -> RunResult:
    workdir = as_path(workdir)  # local or gs:// (pathlib would collapse "gs://" to "gs:/")
    main_process = jax.process_index() == 0
    progress = bool(config.metrics.progress_bar) and main_process
    data = prepare_data(config, progress=progress) if data_iter is None else None
    crab_cfg = run_crab_config(config, data)
    if data_iter is None:
        data_iter = make_data_iterator(config, crab_cfg, data)
    specs = data_specs(config, crab_cfg, data_iter)
    setup, steps, _ = build_setup(config, crab_cfg=crab_cfg, steps=total_steps(config, data_iter))
    if setup.uneven:
        log.warning("kept whole along dims the mesh does not divide: %s", "; ".join(setup.uneven[:10]))
    ckpt = Checkpointer(workdir / "checkpoints", keep=int(config.checkpoint.keep),
                        async_save=bool(config.checkpoint.async_save))
    config_dict = config_to_dict(config)
    latest = ckpt.latest_step()
    if latest is not None:  # before anything compiles: a resume that cannot work fails now
        ckpt.check_compatible(latest, setup.abstract.params, config_dict["model"])

    n_mask = len(crab_cfg.mask_token_ids)
    global_batch = int(config.train.global_batch)
    any_spec = next(iter(specs.values()))
    global_shapes = {k: (global_batch,) + s[1:] for k, (s, _) in any_spec.shapes(n_mask).items()}
    # One jitted function; jit compiles it once per bucket shape (placements depend on ranks only).
    step_fn = jit_train_step(setup, make_train_step(
        setup, micro_batches=int(config.train.micro_batches), with_seg=bool(config.model.seg_branch),
        num_tasks=len(config.data.tasks), router_groups=int(config.metrics.router_layer_groups)), global_shapes)
    log.info("%d step(s), %d bucket shape(s) (seq_len, fbank_frames): %s", steps, len(specs), sorted(specs))

    # Also on resume: checkpoints hold the trainable weights only, the frozen ones come from here.
    state = initial_state(config, setup)
    if latest is not None:
        state, data_state = ckpt.restore(latest, setup.abstract, state)
        if data_state is not None and hasattr(data_iter, "set_state"):
            data_iter.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, latest)

    names = trainable_names(setup)
    shardings = batch_shardings(global_shapes, setup.mesh)
    writer = MetricWriter(workdir, enabled=main_process, tensorboard=bool(config.metrics.tensorboard))
    tb_dir = workdir / "tensorboard" if (main_process and config.metrics.tensorboard) else None
    flops_tok = {key: llm_flops_per_token(crab_cfg, spec.seq_len, setup.trainable_paths) for key, spec in specs.items()}
    peak = peak_flops_per_device(float(config.metrics.peak_flops_per_device))
    start = int(jax.device_get(state.step))
    stop_after = int(config.train.stop_after_steps)
    eval_every = int(config.eval.every_steps)
    history: list[dict] = []
    evals: list[tuple[int, dict]] = []
    compiled: set = set()

    def run_eval(at_step: int) -> None:
        if data is None or data.source == "random":
            return
        t0 = time.perf_counter()
        results = evaluate_state(setup, state, config, data, progress=progress)
        if not results:
            return
        evals.append((at_step, results))
        if main_process:
            from crab_jax.evaluation.generation import flat_metrics

            writer.write(at_step, flat_metrics(results))
            append_eval_jsonl(workdir, at_step, results)
            log.info("held-out evaluation at step %d (%.1f s):\n%s", at_step, time.perf_counter() - t0,
                     "\n".join(format_results(results)))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    step = start
    try:
        with _Preemption() as preempt:
            while step < steps:
                local = next(data_iter)
                key = (int(local["input_ids"].shape[1]), int(local["fbank"].shape[2]))
                if key not in specs:
                    raise ValueError(f"data iterator gave a batch of (seq_len, fbank_frames) {key}, not one of its "
                                     f"declared buckets {sorted(specs)}")
                check_batch(local, specs[key], n_mask, source="data iterator")
                batch = to_global(local, shardings)
                t0 = time.perf_counter()
                state, aux = step_fn(state, batch)
                aux = jax.device_get(aux)
                dt = time.perf_counter() - t0
                if key not in compiled:
                    compiled.add(key)
                    log.info("compiled the train step for bucket %s (%.1f s incl. the step)", key, dt)
                bad = first_non_finite(aux, names)
                if bad is not None:
                    raise NonFiniteError(f"step {step + 1}: non-finite {bad}; stopping without a checkpoint "
                                         f"(last committed: {ckpt.latest_step()})")
                step += 1
                # Real (non-padding) tokens; other processes' rows are assumed alike.
                tokens = float(np.asarray(local["attention_mask"]).sum()) * jax.process_count()
                metrics = summarize(aux, tuple(config.data.tasks))
                metrics.update(step=step, step_time_s=dt, tokens_per_s=tokens / dt)
                u = mfu(flops_tok[key], tokens, dt, jax.device_count(), peak)
                if u is not None:
                    metrics["mfu"] = u
                history.append(metrics)
                if step % int(config.metrics.log_every) == 0 or step == steps:
                    writer.write(step, {**metrics, **data_stats_metrics(data_iter)})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
                leaving = preempt.requested or ckpt.reached_preemption(step) or (
                    stop_after > 0 and step - start >= stop_after)
                if step % int(config.checkpoint.every_steps) == 0 or step == steps or leaving:
                    data_state = data_iter.get_state() if hasattr(data_iter, "get_state") else None
                    ckpt.save(step, state, data_state=data_state, config_dict=config_dict, force=True)
                if leaving:
                    log.warning("leaving at step %d (checkpoint saved)", step)
                    break
                if eval_every > 0 and step % eval_every == 0 and step != steps:
                    run_eval(step)
        if bar is not None:
            bar.close()
            bar = None
        if step >= steps and bool(config.eval.at_end) and not (evals and evals[-1][0] == step):
            run_eval(step)
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
        writer.close()
    return RunResult(history, evals, workdir, tb_dir, data)
