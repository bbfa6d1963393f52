"""A second training run of the same config in one process: with the process's compiled programs
(:mod:`crab_jax.training.compiled`), with the persistent cache only, and with neither.

    python -m benchmarks.repeat_run                  # configs/tiny.py on random batches, 2 steps
    python -m benchmarks.repeat_run --steps 4 --config configs/tiny.py

What a process that trains several runs of one shape pays per run after the first (the transfer
study, a resume in the same process, the tests). One process, four ``train()`` calls on fresh
workdirs: the first compiles and fills a fresh persistent cache; then a run that finds the
process's executables; then one with them cleared (the persistent cache serves them); then one
with both off. Prints each wall time and the ratios to the last.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import jax
from jax.experimental.compilation_cache import compilation_cache

from crab_jax.config.loader import load_config_file
from crab_jax.training import compiled
from crab_jax.training.loop import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def config(path: str, steps: int):
    c = load_config_file(str(REPO / path) if not pathlib.Path(path).is_absolute() else path)
    c.data.source = "random"  # no dataset to make: the runs differ only in what they compile
    c.train.num_steps = steps
    c.checkpoint.every_steps = steps
    c.eval.at_end = False
    c.metrics.tensorboard = False
    c.metrics.progress_bar = False
    return c


def timed(c, workdir) -> float:
    t0 = time.perf_counter()
    train(c, workdir)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args(argv)
    c = config(a.config, a.steps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        jax.config.update("jax_compilation_cache_dir", str(tmp / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        first = timed(c, tmp / "first")
        kept = timed(c, tmp / "kept")
        compiled.clear()
        persistent = timed(c, tmp / "persistent")
        compiled.clear()
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()  # JAX decides once per process whether the cache is used
        neither = timed(c, tmp / "neither")
    print(json.dumps({"config": a.config, "steps": a.steps, "first_run_s": first, "kept_programs_s": kept,
                      "persistent_cache_only_s": persistent, "neither_s": neither,
                      "kept_over_neither": kept / neither, "persistent_over_neither": persistent / neither},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
