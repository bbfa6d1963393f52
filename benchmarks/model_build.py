"""Building a model abstractly (``nnx.eval_shape``, as every run's setup does twice): flax's
``nnx.Rngs`` vs :func:`crab_jax.models.rngs.make_rngs`, as ratios measured in one run.

    python -m benchmarks.model_build                   # the tiny Crab, 5 repetitions each
    python -m benchmarks.model_build --preset paper    # Crab-7B's structure (no weights are made)

flax's stream bumps its counter with ``count[...] += 1``, and under a trace each bump makes JAX
walk every equation traced so far to phrase an AttributeError nobody reads (jax-ml/jax#40041):
quadratic in the number of weights. The repetitions of the two alternate; the weights' shapes
of both builds are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from flax import nnx

from crab_jax.families.crab.model import Crab
from crab_jax.families.crab.presets import paper_crab_config, tiny_crab_config
from crab_jax.models.rngs import make_rngs

PRESETS = {"tiny": tiny_crab_config, "paper": paper_crab_config}


def build_seconds(cfg, make) -> tuple[float, dict]:
    t0 = time.perf_counter()
    model = nnx.eval_shape(lambda: Crab(cfg, rngs=make(0)))
    seconds = time.perf_counter() - t0
    return seconds, jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(nnx.state(model)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]()
    times = {"nnx.Rngs": [], "make_rngs": []}
    shapes = {}
    for rep in range(args.repeats):
        order = list(times) if rep % 2 == 0 else list(reversed(times))
        for name in order:
            seconds, shapes[name] = build_seconds(cfg, nnx.Rngs if name == "nnx.Rngs" else make_rngs)
            times[name].append(seconds)
    if shapes["nnx.Rngs"] != shapes["make_rngs"]:
        raise SystemExit("the two builds differ in their weights' shapes")
    leaves = len(jax.tree.leaves(shapes["make_rngs"], is_leaf=lambda x: isinstance(x, tuple)))
    flax_s, ours_s = statistics.median(times["nnx.Rngs"]), statistics.median(times["make_rngs"])
    print(f"Crab {args.preset}: {leaves} variables, median of {args.repeats} abstract builds")
    print("| rngs | build | speed-up |")
    print("|---|---|---|")
    print(f"| nnx.Rngs (flax) | {flax_s:.2f} s | 1.00x |")
    print(f"| make_rngs | {ours_s:.2f} s | {flax_s / ours_s:.2f}x |")


if __name__ == "__main__":
    main()
