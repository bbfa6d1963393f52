"""The transfer study: train every planned run in this process, score each model on every study
task, write the table.

``run_study(training, study, DIR)``:

1. Prepares the study's data once with every study task (for ``synthetic``: the dataset and its
   word tokenizer) and pins that tokenizer in every run (``data.tokenizer``), so all models share
   one vocabulary and a model trained on one task can be asked the others' questions.
2. Runs the plan (:func:`crab_jax.study.plan.plan_runs`) with
   :func:`crab_jax.training.loop.run_training`, one workdir per run (``DIR/runs/<name>/``:
   checkpoints, metrics), the persistent compilation cache on (runs of the same shapes load
   their compiled steps), a progress bar over the whole plan, the runs' own logging quiet.
   The runs do no held-out evaluation of their own (``eval.at_end`` off): after training, the
   trained state (:attr:`~crab_jax.training.loop.RunResult.state`) is evaluated once on the
   held-out split of EVERY study task (:func:`crab_jax.evaluation.heldout.evaluate_state` with
   the study's task list), each scored with its family's headline metric.
   A floor with nothing to train (:attr:`~crab_jax.study.plan.PlannedRun.trains` False: an
   empty ``study.shared_trainable``) is built as the trainer builds it (the seed, then
   ``model.init_checkpoint``) and scored the same way, without a step.
3. A finished run writes ``DIR/runs/<name>/result.json`` (atomically) as its last act; a rerun
   skips every run that has one (an interrupted run resumes from its checkpoint).
4. Writes ``DIR/transfer.json`` and ``DIR/transfer.md`` (:mod:`crab_jax.study.transfer_table`).

A synthetic run trains on its own tasks' generated folder (``data.path`` empty: the default
folder is named after the task set; each task's records depend on (seed, task, split, index)
only, so they are the same records in every run).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import pathlib
import time
from typing import Any, Mapping, Sequence

import ml_collections
from tqdm import tqdm

from crab_jax.checkpoints.convert.atomic import atomic_file
from crab_jax.config.check import ConfigError
from crab_jax.data.sources import DataSetup, prepare_data
from crab_jax.evaluation.heldout import evaluate_state, headline
from crab_jax.io.workdir_lock import WorkdirLock
from crab_jax.study import transfer_table
from crab_jax.study.plan import PlannedRun, plan_runs
from crab_jax.study.schema import StudyConfig
from crab_jax.training.compile_cache import enable_compilation_cache
from crab_jax.training.loop import RunResult, run_training
from crab_jax.training.setup import build_setup, initial_state, resolve, run_model_config

log = logging.getLogger("crab_jax.study")

RUNS_DIR = "runs"
RESULT_FILE = "result.json"
# Loggers turned down to warnings while a run trains (its per-step / checkpoint chatter).
QUIET_LOGGERS = ("crab_jax.train", "crab_jax.data", "absl", "jax")


def set_keys(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with each dotted key of ``values`` set (the keys must exist)."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        if last not in node:
            raise ConfigError(f"study: the training config has no key {key!r}")
        node[last] = value
    return out


def study_data(training: ml_collections.ConfigDict, study: StudyConfig, *, progress: bool) -> DataSetup:
    """The data of every study task, prepared once (the synthetic dataset and tokenizer made if missing)."""
    run, family = resolve(set_keys(training, {"data.tasks": tuple(study.tasks)}))
    if run.data.source == "synthetic" and run.data.path:
        # A run's synthetic folder holds its own task set; a shared one would be regenerated per run.
        raise ConfigError(f"config data.path={run.data.path!r}: a synthetic study generates one folder per "
                          "task set; leave data.path empty (data.cache_dir chooses where)")
    if run.data.prepared:
        # A prepared folder is read whole, whatever data.tasks says: a single-task run would see every task.
        raise ConfigError(f"config data.prepared={run.data.prepared!r}: a study's single-task runs read their "
                          "own task's records; leave data.prepared empty (data.path: the records)")
    return prepare_data(run.data, family, progress=progress)


def run_config(training: ml_collections.ConfigDict, planned: PlannedRun, data: DataSetup) -> ml_collections.ConfigDict:
    """The training config of ``planned``: its overrides, the study's tokenizer, no evaluation or
    progress bar of its own (the study evaluates and shows one bar)."""
    pins = {"data.tokenizer": str(data.tokenizer_dir)} if data.tokenizer_dir is not None else {}
    return set_keys(training, {**planned.overrides, **pins, "eval.at_end": False, "eval.every_steps": 0,
                               "metrics.progress_bar": False})


def evaluate_on_tasks(config: ml_collections.ConfigDict, tasks: Sequence[str], result: RunResult,
                      data: DataSetup) -> dict[str, dict]:
    """The trained state of ``result`` scored on the held-out split of every task in ``tasks``:
    ``{"task/metric": {mean, n, chance?}}`` (the run's model config must be the one the study's
    data gives: the same vocabulary, from the study's tokenizer)."""
    run, family = resolve(set_keys(config, {"data.tasks": tuple(tasks)}))
    expected = run_model_config(run, family, data)
    if expected != result.setup.model_cfg:
        raise ValueError(f"{result.workdir}: the run's model config differs from the one of the study's task list "
                         f"{list(tasks)} (a different vocabulary? every run reads data.tokenizer={data.tokenizer_dir})")
    return evaluate_state(run, family, result.setup, result.state, data)


def write_atomic(path: pathlib.Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all (temporary sibling, fsync, rename)."""
    with atomic_file(str(path), overwrite=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: pathlib.Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def read_result(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@contextlib.contextmanager
def quiet_logging(level: int = logging.WARNING):
    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, before):
            lg.setLevel(lvl)


def untrained(config: ml_collections.ConfigDict, run_dir: pathlib.Path, data: DataSetup) -> RunResult:
    """The run's model before any step, as :func:`run_training` would start it (its seed, its
    ``model.init_checkpoint``), with no history and nothing written."""
    run, family = resolve(config)
    setup, _, _ = build_setup(run, model_cfg=run_model_config(run, family, data), steps=1)
    return RunResult([], [], run_dir, None, data, dict(family.headline), state=initial_state(run, setup), setup=setup)


def train_and_score(training: ml_collections.ConfigDict, study: StudyConfig, planned: PlannedRun,
                    data: DataSetup, run_dir: pathlib.Path) -> dict:
    """Trains ``planned`` (resuming its checkpoints; nothing when it does not train), scores it on
    every study task, writes and returns its result (``scores``: task -> the family's headline
    metric entry)."""
    config = run_config(training, planned, data)
    t0 = time.perf_counter()
    with quiet_logging():
        result = run_training(config, run_dir) if planned.trains else untrained(config, run_dir, data)
        t1 = time.perf_counter()
        results = evaluate_on_tasks(config, study.tasks, result, data)
    _, family = resolve(config)
    scores = headline(results, family.headline)
    missing = [t for t in study.tasks if t not in scores]
    if missing:
        raise ValueError(f"{run_dir}: the held-out evaluation scored no sample of task(s) {missing}")
    losses = [h["loss"] for h in result.history if "loss" in h]
    out = {"name": planned.name, "kind": planned.kind, "variant": planned.variant, "seed": planned.seed,
           "tasks": list(planned.tasks), "overrides": {k: (list(v) if isinstance(v, tuple) else v)
                                                       for k, v in planned.overrides.items()},
           "trained": planned.trains, "scores": {t: scores[t] for t in study.tasks}, "results": results,
           "steps_run": len(result.history), "final_loss": losses[-1] if losses else None,
           "train_seconds": round(t1 - t0, 2), "eval_seconds": round(time.perf_counter() - t1, 2)}
    run_dir.mkdir(parents=True, exist_ok=True)  # an untrained run has no folder yet
    write_json_atomic(run_dir / RESULT_FILE, out)  # last: its presence means the run is done
    return out


def run_study(training: ml_collections.ConfigDict, study: StudyConfig, workdir: str | os.PathLike, *,
              command: str = "", progress: bool = True) -> dict:
    """Runs (or resumes) the whole study into ``workdir``; returns the table (``transfer.json``'s content)."""
    workdir = pathlib.Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache(str(training.train.compilation_cache), str(training.data.cache_dir))
    plan = plan_runs(training, study)
    with WorkdirLock(workdir):
        results = {p.name: read_result(workdir / RUNS_DIR / p.name) for p in plan}
        todo = [p for p in plan if results[p.name] is None]
        log.info("study: %d run(s), %d finished, %d to run", len(plan), len(plan) - len(todo), len(todo))
        if todo:
            data = study_data(training, study, progress=progress)
            bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="study", unit="run",
                       dynamic_ncols=True, disable=not progress)
            try:
                for planned in todo:
                    bar.set_postfix_str(planned.name)
                    results[planned.name] = train_and_score(training, study, planned, data,
                                                            workdir / RUNS_DIR / planned.name)
                    bar.update(1)
            finally:
                bar.close()
        table = transfer_table.build(list(results.values()), study)
        table["command"] = command
        write_json_atomic(workdir / transfer_table.JSON_FILE, table)
        write_atomic(workdir / transfer_table.MARKDOWN_FILE, transfer_table.markdown(table))
    return table
