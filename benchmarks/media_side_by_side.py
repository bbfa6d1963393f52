"""A sample's media decoded side by side vs one after another (crab_jax.data.media.concurrent).

    python -m benchmarks.media_side_by_side [--reps 12]

The AVE and S4 samples of ``benchmarks/vs_torch.py`` (``shared/media``, the crab_full fixture's
tokenizer and config) through crab_jax's example builder, the two ways interleaved rep by rep in
one process: ``side by side`` (the builder as it is: frames, filterbank and mask on the media
threads) and ``serial`` (the same calls run in order on the calling thread).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

from benchmarks import vs_torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=12, help="timed repetitions per sample and way (default 12)")
    p.add_argument("--fixtures", default=str(vs_torch.SHARED / "fixtures" / "crab"))
    p.add_argument("--media", default=str(vs_torch.SHARED / "media"))
    args = p.parse_args(argv)
    from crab_jax.families.crab import examples

    side_by_side = examples.run_side_by_side
    ways = {"side by side": side_by_side, "serial": lambda calls: [call() for call in calls]}
    samples = {"AVE": 0, "S4": 2}
    times = {(w, s): [] for w in ways for s in samples}
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        side = vs_torch.JaxSide(vs_torch.parse_args(["--fixtures", args.fixtures, "--media", args.media]),
                                pathlib.Path(tmp), train_steps=False)
        try:
            for rep in range(args.reps + 1):  # the first round warms up (threads, file cache)
                for way, run in ways.items():
                    examples.run_side_by_side = run
                    for name, i in samples.items():
                        t0 = time.perf_counter()
                        side.builder.build(side.records[i], i)
                        if rep:
                            times[(way, name)].append(time.perf_counter() - t0)
        finally:
            examples.run_side_by_side = side_by_side
    print("| sample | serial median ms | side by side median ms | speed-up | serial best | side by side best |")
    print("|---|---|---|---|---|---|")
    for name in samples:
        a, b = times[("serial", name)], times[("side by side", name)]
        print(f"| {name} | {statistics.median(a) * 1e3:.1f} | {statistics.median(b) * 1e3:.1f} | "
              f"{statistics.median(a) / statistics.median(b):.2f}x | {min(a) * 1e3:.1f} | {min(b) * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
