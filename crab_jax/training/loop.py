"""The training loop: the side-effect edge around the pure train step.

Resolves the data (for ``synthetic``: generates the dataset and builds its tokenizer on first
use, :mod:`crab_jax.data.sources`), builds the run from the config and its model family
(mesh, model with the tokenizer's vocabulary, sharded state: :mod:`crab_jax.training.setup`),
holds ``<workdir>/run.lock`` (one run per workdir, :mod:`crab_jax.io.workdir_lock`), resumes
from the latest committed checkpoint of ``<workdir>/checkpoints`` that reads, after checking
this run's config against the saved one (weights and the data iterator's position,
:mod:`crab_jax.training.resume`), feeds batches (one compiled step per bucket shape), and after
every step runs the hooks (:mod:`crab_jax.training.hooks`): metrics from process 0,
checkpoints every ``checkpoint.every_steps`` and on SIGTERM / preemption, held-out
evaluation every ``eval.every_steps`` and at the end. It stops on the first non-finite loss /
gradient / parameter without writing it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import signal
import time
from typing import Any, Iterator

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from crab_jax.checkpoints.run import Checkpointer
from crab_jax.config.sections import RunConfig
from crab_jax.data.sources import (DataSetup, check_heldout_files, prepare_data, single_threaded_blas,
                                  train_iterator)
from crab_jax.evaluation.heldout import evaluate_state, route_images_state, trim_eval_jsonl
from crab_jax.families.base import Family
from crab_jax.io.paths import as_path
from crab_jax.io.workdir_lock import WorkdirLock
from crab_jax.parallel.mesh import to_global
from crab_jax.parallel.multihost import any_process
from crab_jax.training.hooks import CheckpointHook, EvalHook, MetricsHook
from crab_jax.training.metric_writer import MetricWriter
from crab_jax.training.metrics import mfu, peak_flops_per_device, summarize
from crab_jax.training.resume import Resume
from crab_jax.training.setup import build_setup, initial_state, resolve, run_model_config, total_steps
from crab_jax.training.compiled import compile_once
from crab_jax.training.step import batch_shardings, first_non_finite, jit_train_step, make_train_step, trainable_names

log = logging.getLogger("crab_jax.train")


class NonFiniteError(FloatingPointError):
    """The step produced a non-finite value; nothing of it was checkpointed."""


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
        log.warning("SIGTERM: saving a checkpoint at the end of this step (every process), then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class RunResult:
    """What :func:`run_training` did.

    Attributes:
      history: metrics of every step this call ran (``loss``, ``step``, ...).
      evals: ``(step, {"task/metric": {mean, n, chance?}})`` of every held-out evaluation.
      workdir: the run folder; ``tensorboard_dir`` its TensorBoard logs (None when off).
      data: the resolved data section (dataset root, tokenizer).
      headline: the family's task -> summary metric table (for :func:`~crab_jax.evaluation.heldout.format_results`).
      data_stats: the data iterator's ``stats()`` at the end (None for iterators without them).
      state: the train state at the end (its ``params`` the trained weights).
      setup: the run's :class:`~crab_jax.training.state.TrainSetup` (model config, mesh, merge):
        with ``state``, what a caller needs to evaluate the trained model further (the transfer
        study scores a single-task model on every study task).
    """

    history: list[dict]
    evals: list[tuple[int, dict]]
    workdir: epath.Path
    tensorboard_dir: epath.Path | None
    data: DataSetup | None
    headline: dict
    data_stats: dict | None = None
    state: Any = None
    setup: Any = None


def bucket_key(batch) -> tuple:
    """A batch's shape signature (every key's per-sample shape): one compiled step per key."""
    return tuple(sorted((k, tuple(np.shape(v)[1:])) for k, v in batch.items()))


def spec_key(shapes: dict) -> tuple:
    """:func:`bucket_key` of the batches a spec's ``{key: (shape, dtype)}`` describes."""
    return tuple(sorted((k, tuple(shape[1:])) for k, (shape, _) in shapes.items()))


def train(config, workdir: str | pathlib.Path, *, data_iter: Iterator[dict] | None = None) -> list[dict]:
    """Runs (or resumes) training; returns the metrics of the steps this call ran."""
    return run_training(config, workdir, data_iter=data_iter).history


def run_training(config, workdir: str | pathlib.Path, *, data_iter: Iterator[dict] | None = None) -> RunResult:
    """Runs (or resumes) training with held-out evaluation (see the module docstring).

    ``config``: the run config (ConfigDict, dict or :class:`RunConfig`); ``data_iter``: batches
    to train on instead of the config's data source (tests, benchmarks)."""
    run, family = resolve(config)
    workdir = as_path(workdir)
    with single_threaded_blas(), WorkdirLock(workdir, enabled=jax.process_index() == 0):
        return _run_training(run, family, workdir, data_iter)


def _run_training(run: RunConfig, family: Family, workdir: epath.Path, data_iter) -> RunResult:
    main_process = jax.process_index() == 0
    progress = bool(run.metrics.progress_bar) and main_process
    data = prepare_data(run.data, family, progress=progress) if data_iter is None else None
    model_cfg = run_model_config(run, family, data)
    if data_iter is None:
        data_iter = train_iterator(run, family, model_cfg, data, progress=progress)
        if run.eval.at_end or int(run.eval.every_steps) > 0:
            check_heldout_files(run, family, data)
    # Every shape the iterator yields (one compile each); an iterator given by the caller without
    # ``bucket_specs`` yields the random source's one shape.
    bucket_specs = data_iter.bucket_specs() if hasattr(data_iter, "bucket_specs") else [
        family.batch.spec(run.data, model_cfg, int(run.train.global_batch) // jax.process_count())]
    specs = {spec_key(family.batch.shapes(s, model_cfg)): s for s in bucket_specs}
    setup, steps, _ = build_setup(run, model_cfg=model_cfg, steps=total_steps(run, data_iter))
    if setup.uneven:
        log.warning("kept whole along dims the mesh does not divide: %s", "; ".join(setup.uneven[:10]))
    ckpt = Checkpointer(workdir / "checkpoints", keep=int(run.checkpoint.keep), async_save=bool(run.checkpoint.async_save))
    config_dict = run.as_dict()
    resume = Resume(ckpt, workdir, run, config_dict, setup.abstract)
    latest = resume.choose()  # before anything compiles: a resume that cannot work fails now

    global_batch = int(run.train.global_batch)
    # One jitted function; jit compiles it once per bucket shape (placements depend on ranks only).
    first_spec = next(iter(specs.values()))
    global_shapes = {k: (global_batch,) + s[1:] for k, (s, _) in family.batch.shapes(first_spec, model_cfg).items()}
    step_fn = jit_train_step(setup, make_train_step(
        setup, micro_batches=int(run.train.micro_batches), with_seg=bool(run.model.seg_branch),
        num_tasks=len(run.data.tasks), router_groups=int(run.metrics.router_layer_groups)), global_shapes)
    log.info("%d step(s), %d bucket shape(s) of token lengths %s", steps, len(specs), sorted(s.seq_len for s in specs.values()))

    # Also on resume: checkpoints hold the trainable weights only, the frozen ones come from here.
    state = initial_state(run, setup)
    if latest is not None:
        latest, state, data_state = resume.restore(latest, state)
        if data_state is not None and hasattr(data_iter, "set_state"):
            data_iter.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, latest)

    names = trainable_names(setup)
    shardings = batch_shardings(global_shapes, setup.mesh)
    start = int(jax.device_get(state.step))
    # Rows past ``start`` were written by the run that crashed after its last checkpoint; this run
    # writes those steps again (one row per step in metrics.jsonl).
    writer = MetricWriter(workdir, enabled=main_process, tensorboard=bool(run.metrics.tensorboard), resumed_step=start)
    if main_process and latest is not None:
        trim_eval_jsonl(workdir, start)
    tb_dir = workdir / "tensorboard" if (main_process and run.metrics.tensorboard) else None
    peak = peak_flops_per_device(float(run.metrics.peak_flops_per_device))
    stop_after = int(run.train.stop_after_steps)

    def evaluate(current_state) -> dict:
        if data is None or data.source == "random":
            return {}
        return evaluate_state(run, family, setup, current_state, data, progress=progress)

    def route_images(current_state) -> dict:
        if data is None or data.source == "random":
            return {}
        return route_images_state(run, family, setup, current_state, data)

    bar = tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True) if progress else None
    metrics_hook = MetricsHook(writer, log_every=run.metrics.log_every, data_iter=data_iter, bar=bar)
    eval_hook = EvalHook(evaluate, every_steps=run.eval.every_steps, at_end=run.eval.at_end, workdir=workdir,
                         writer=writer, headline=family.headline, main_process=main_process, images=route_images)
    hooks = [metrics_hook, CheckpointHook(ckpt, every_steps=run.checkpoint.every_steps, data_iter=data_iter,
                                          config_dict=config_dict), eval_hook]
    compiled: dict = {}  # bucket key -> executable (compile_once: shared by identical runs of the process)
    flops_per_token: dict = {}
    step = start
    try:
        with _Preemption() as preempt:
            while step < steps:
                local = next(data_iter)
                key = bucket_key(local)
                spec = specs.get(key)
                if spec is None:
                    raise ValueError(f"data iterator gave a batch of shapes {dict(key)}, not one of its declared "
                                     f"buckets {[dict(k) for k in specs]}")
                family.batch.check(local, spec, model_cfg, source="data iterator")
                batch = to_global(local, shardings)
                t0 = time.perf_counter()
                first = key not in compiled
                if first:
                    compiled[key] = compile_once(step_fn.lower(state, batch), setup.mesh)
                state, aux = compiled[key](state, batch)
                aux = jax.device_get(aux)
                dt = time.perf_counter() - t0
                if first:
                    log.info("compiled the train step for bucket %s (%.1f s incl. the step)", spec, dt)
                bad = first_non_finite(aux, names)
                if bad is not None:
                    raise NonFiniteError(f"step {step + 1}: non-finite {bad}; stopping without a checkpoint "
                                         f"(last committed: {ckpt.latest_step()})")
                step += 1
                # Real (non-padding) tokens; other processes' rows are assumed alike.
                real = np.asarray(local["attention_mask"])
                tokens = float(real.sum()) * jax.process_count()
                metrics = summarize(aux, tuple(run.data.tasks))
                # padding_fraction: the token slots of the step that hold no sample (what packing cuts).
                metrics.update(step=step, step_time_s=dt, tokens_per_s=tokens / dt,
                               padding_fraction=1.0 - float(real.sum()) / max(real.size, 1))
                if key not in flops_per_token:  # the bucket's sequence length and media slots
                    flops_per_token[key] = family.flops(model_cfg, spec, setup.trainable_paths).per_token
                u = mfu(flops_per_token[key], tokens, dt, jax.device_count(), peak)
                if u is not None:
                    metrics["mfu"] = u
                # A SIGTERM reaches one host first: every process must leave after the same step
                # (the next step is a collective), so the flag is agreed on through one.
                leaving = any_process(preempt.requested) or ckpt.reached_preemption(step) or (
                    stop_after > 0 and step - start >= stop_after)
                for hook in hooks:
                    hook.after_step(step, state, metrics, last=step == steps, leaving=leaving)
                if leaving:
                    break
        for hook in hooks:
            hook.at_end(step, state, finished=step >= steps)
    finally:
        for hook in hooks:
            hook.close()
    return RunResult(metrics_hook.history, eval_hook.evals, workdir, tb_dir, data, dict(family.headline),
                     data_iter.stats() if hasattr(data_iter, "stats") else None, state=state, setup=setup)
