"""The persistent compilation cache: the tiny demo's wall time with a cold and a warm cache.

    python -m benchmarks.compile_cache                 # configs/tiny.py, 3 steps + the final evaluation
    python -m benchmarks.compile_cache --config configs/crab_plus_tiny.py

Runs ``python -m crab_jax.train`` twice in fresh processes, each on a fresh workdir (no
resume), the first with an empty ``train.compilation_cache`` folder and the second reusing it,
then a third with the cache off; prints each wall time and the ratios. The dataset is generated
(or found) before the timed runs, so the difference is compile time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run_train(config: str, workdir: str, cache: str, steps: int) -> float:
    cmd = [sys.executable, "-m", "crab_jax.train", f"--config={config}", f"--workdir={workdir}",
           f"--config.train.num_steps={steps}", f"--config.train.compilation_cache={cache}"]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "jax_cache")
        run_train(a.config, os.path.join(tmp, "warmup"), "none", 1)   # dataset + tokenizer, not timed
        cold = run_train(a.config, os.path.join(tmp, "cold"), cache, a.steps)
        warm = run_train(a.config, os.path.join(tmp, "warm"), cache, a.steps)
        off = run_train(a.config, os.path.join(tmp, "off"), "none", a.steps)
        entries = len(os.listdir(cache))
    print(json.dumps({"config": a.config, "steps": a.steps, "cold_cache_s": cold, "warm_cache_s": warm,
                      "cache_off_s": off, "cache_entries": entries, "warm_over_cold": warm / cold,
                      "warm_over_off": warm / off}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
