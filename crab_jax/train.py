"""Train Crab: ``python -m crab_jax.train --config configs/tiny.py --workdir /tmp/crab_tiny``.

Flags:
  --config FILE[:VARIANT]   an ml_collections config file (``configs/base.py`` declares every key;
                            ``configs/tiny.py`` is the CPU demo, ``configs/tpu_v4.py:finetune`` the
                            paper's recipe); override any key with ``--config.section.key=value``.
  --workdir DIR             checkpoints (``DIR/checkpoints``), ``DIR/metrics.jsonl``, held-out
                            evaluations (``DIR/eval.jsonl``), TensorBoard (``DIR/tensorboard``).
                            Rerunning the same command resumes from the latest committed
                            checkpoint; SIGTERM saves and exits cleanly.

At the end it prints the loss of the first and last steps (each a mean over a few steps),
the bad records of the data (per reason and task) and the annotation files skipped, every
task's held-out metric next to its chance level, and where the logs are.

Multi-host: ``jax.distributed.initialize`` runs before any other JAX call (automatically on
TPU, or from ``config.distributed`` / ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``); only process 0 logs and writes metrics.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import time

# Before numpy loads (here and in Grain's worker processes): the data pipeline's small matmuls
# are ~100x slower with a multi-threaded BLAS on a busy CPU (crab_jax.data.sources.
# single_threaded_blas); XLA's thread pool is separate. An explicit setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from crab_jax.config.command_line import checked_command_line
from crab_jax.io.write_errors import WriteFailed

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(REPO / "configs" / "tiny.py")


def define_flags():
    """The command's flags, defined when run (after :func:`checked_command_line`: defining --config
    already applies the command line's overrides) and so not when a test imports this module."""
    config = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG,
        "Training config file (ml_collections), optionally FILE:VARIANT; override keys with --config.a.b=v.",
        lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tensorboard/. "
                                  "The same workdir resumes the run.")
    return config, workdir


def maybe_initialize_distributed(dist_cfg) -> None:
    """``jax.distributed.initialize`` when asked, on TPU, or when the JAX_* env variables say so."""
    mode = dist_cfg.initialize
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"config distributed.initialize={mode!r}; known: auto, always, never")
    if mode == "never":
        return
    address = dist_cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = dist_cfg.num_processes if dist_cfg.num_processes > 0 else int(os.environ.get("JAX_NUM_PROCESSES", "-1"))
    pid = dist_cfg.process_id if dist_cfg.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    on_tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"))
    if address and num > 0 and pid >= 0:
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    elif mode == "always" or on_tpu_pod:
        jax.distributed.initialize()  # TPU pods (and SLURM, ...) find their coordinator themselves


def main(argv):
    del argv
    # The training stack is imported here, after the command line was checked (checked_command_line): a bad
    # command line is refused in about a second instead of after ~10 s of imports.
    from crab_jax.training.compile_cache import enable_compilation_cache

    config = _CONFIG.value  # checked against the schema by checked_command_line, as is the workdir
    workdir = _WORKDIR.value
    maybe_initialize_distributed(config.distributed)
    enable_compilation_cache(config.train.compilation_cache, config.data.cache_dir)
    # Orbax logs every save step at INFO through absl; keep the console to our own messages.
    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("crab_jax")
    ours.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    t0 = time.perf_counter()
    result = train_or_exit(config, workdir)
    if jax.process_index() == 0:
        print("\n".join(summary_lines(result, time.perf_counter() - t0)))


def train_or_exit(config, workdir):
    """``run_training``; the failures a user must act on (disk full, workdir in use, a changed
    config on resume, unreadable checkpoints) end the process with their one line."""
    from crab_jax.training.loop import run_training
    from crab_jax.training.resume import REFUSALS

    try:
        return run_training(config, workdir)
    except WriteFailed as e:  # disk full, quota, read-only: the one line says what, where, free space
        sys.exit(f"error: {e}")
    except REFUSALS as e:  # workdir in use, resume with a changed config, unreadable checkpoints
        sys.exit(f"error: {e}")


def mean_loss(history: list[dict], first: bool, k: int) -> tuple[float, int, int]:
    """Mean loss over the first (or last) ``k`` steps of ``history`` and that step range."""
    rows = history[:k] if first else history[-k:]
    return sum(r["loss"] for r in rows) / len(rows), rows[0]["step"], rows[-1]["step"]


def summary_lines(result, seconds: float) -> list[str]:
    """The end-of-run report: loss first vs last, held-out metric vs chance per task, the data's
    bad records (per reason, per task) and skipped annotation files, log folders."""
    from crab_jax.data.pipeline.bad_records import summary_lines as data_summary_lines
    from crab_jax.evaluation.heldout import format_results

    lines = [f"run finished in {seconds:.0f} s ({len(result.history)} step(s) this run)"]
    h = result.history
    if h:
        k = max(1, min(10, len(h) // 4))
        a, a0, a1 = mean_loss(h, True, k)
        b, b0, b1 = mean_loss(h, False, k)
        lines.append(f"loss: {a:.4f} (mean of steps {a0}-{a1}) -> {b:.4f} (mean of steps {b0}-{b1})")
    if result.data_stats is not None:
        lines += data_summary_lines(result.data_stats)
    if result.evals:
        step, results = result.evals[-1]
        lines.append(f"held-out metrics at step {step} (chance = best media-blind answer):")
        lines += format_results(results, result.headline)
    lines.append(f"metrics: {result.workdir / 'metrics.jsonl'}"
                 + (f", held-out: {result.workdir / 'eval.jsonl'}" if result.evals else ""))
    if result.tensorboard_dir is not None:
        lines.append(f"TensorBoard: tensorboard --logdir {result.tensorboard_dir}")
    lines.append(f"checkpoints: {result.workdir / 'checkpoints'} (rerun the same command to resume)")
    return lines


if __name__ == "__main__":
    parse_flags = checked_command_line(default_config=DEFAULT_CONFIG, workdir_flag="workdir")
    _CONFIG, _WORKDIR = define_flags()
    app.run(main, flags_parser=parse_flags)
