"""The training loop's side effects, one hook each: metrics, checkpoints, held-out evaluation.

The loop (:mod:`crab_jax.training.loop`) runs the pure step and calls, after every step,
``hook.after_step(step, state, metrics, last=..., leaving=...)`` on each hook in order, and
``hook.at_end(step, state, finished=...)`` once when it stops (finished or not); ``close()``
runs in a ``finally``. Only process 0 writes metrics; every process takes part in saves and
evaluations (collectives).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from etils import epath
from tqdm import tqdm

from crab_jax.checkpoints.run import Checkpointer
from crab_jax.evaluation.heldout import append_eval_jsonl, format_results
from crab_jax.evaluation.generation import flat_metrics
from crab_jax.training.metric_writer import MetricWriter

log = logging.getLogger("crab_jax.train")


class Hook:
    """No-op base: override what the hook needs."""

    def after_step(self, step: int, state, metrics: dict, *, last: bool, leaving: bool) -> None:
        pass

    def at_end(self, step: int, state, *, finished: bool) -> None:
        pass

    def close(self) -> None:
        pass


def data_stats_metrics(data_iter) -> dict:
    """The pipeline's counters as flat ``data/...`` scalars, counts per key one level down as
    ``data/<counter>/<key>`` (``data/bad_by_reason/missing_file``); empty for iterators without stats."""
    if not hasattr(data_iter, "stats"):
        return {}
    out = {}
    for k, v in data_iter.stats().items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"data/{k}"] = v
        elif isinstance(v, dict):
            out.update({f"data/{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))})
    return out


class MetricsHook(Hook):
    """``metrics.jsonl`` + TensorBoard every ``log_every`` steps (and the last), a progress bar.

    ``history`` keeps every step's metrics of this run (the run summary reads it).
    """

    def __init__(self, writer: MetricWriter, *, log_every: int, data_iter, bar: tqdm | None):
        self.writer, self.log_every, self.data_iter, self.bar = writer, int(log_every), data_iter, bar
        self.history: list[dict] = []

    def after_step(self, step, state, metrics, *, last, leaving):
        self.history.append(metrics)
        if step % self.log_every == 0 or last:
            self.writer.write(step, {**metrics, **data_stats_metrics(self.data_iter)})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

    def at_end(self, step, state, *, finished):
        self.close_bar()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        self.writer.close()


class CheckpointHook(Hook):
    """Saves every ``every_steps``, at the last step and when the run leaves early (SIGTERM,
    preemption, ``train.stop_after_steps``), with the data iterator's position."""

    def __init__(self, ckpt: Checkpointer, *, every_steps: int, data_iter, config_dict: dict):
        self.ckpt, self.every, self.data_iter, self.config_dict = ckpt, int(every_steps), data_iter, config_dict

    def after_step(self, step, state, metrics, *, last, leaving):
        if step % self.every == 0 or last or leaving:
            data_state = self.data_iter.get_state() if hasattr(self.data_iter, "get_state") else None
            self.ckpt.save(step, state, data_state=data_state, config_dict=self.config_dict, force=True)
        if leaving:
            log.warning("leaving at step %d (checkpoint saved)", step)

    def close(self) -> None:
        self.ckpt.close()


class EvalHook(Hook):
    """Held-out evaluation every ``every_steps`` (not at the last step) and at the end of a
    finished run (``at_end``); process 0 logs and writes ``eval.jsonl`` and the metric writer.

    ``evaluate(state) -> {task/metric: {mean, n, chance?}}`` (empty: nothing to evaluate).
    ``images(state) -> {tag: [H, W, 3] uint8}``: figures of the same evaluation for TensorBoard
    (every process calls it; process 0 writes them). ``evals`` collects ``(step, results)``.
    """

    def __init__(self, evaluate: Callable[[Any], dict], *, every_steps: int, at_end: bool, workdir: epath.Path,
                 writer: MetricWriter, headline, main_process: bool,
                 images: Callable[[Any], dict] | None = None):
        self.evaluate, self.every, self.final = evaluate, int(every_steps), bool(at_end)
        self.images = images
        self.workdir, self.writer, self.headline, self.main_process = workdir, writer, headline, main_process
        self.evals: list[tuple[int, dict]] = []

    def run(self, step: int, state) -> None:
        t0 = time.perf_counter()
        results = self.evaluate(state)
        if not results:
            return
        self.evals.append((step, results))
        images = self.images(state) if self.images is not None else {}
        if self.main_process:
            self.writer.write(step, flat_metrics(results))
            self.writer.write_images(step, images)
            append_eval_jsonl(self.workdir, step, results)
            log.info("held-out evaluation at step %d (%.1f s):\n%s", step, time.perf_counter() - t0,
                     "\n".join(format_results(results, self.headline)))

    def after_step(self, step, state, metrics, *, last, leaving):
        if self.every > 0 and step % self.every == 0 and not last and not leaving:
            self.run(step, state)

    def at_end(self, step, state, *, finished):
        if finished and self.final and not (self.evals and self.evals[-1][0] == step):
            self.run(step, state)
