"""Peak memory of one converter command: each run in a fresh Python process, measured by the
process itself (``VmHWM`` of ``/proc/self/status``), plus the table the conversion benchmarks print.

``ru_maxrss`` of a child would carry the parent's high-water mark across fork/exec, so the
child reads its own ``VmHWM`` at the end and prints it. The import-only baseline is a process
that imports what a conversion imports (jax, flax, orbax, torch and the family's converter)
and converts nothing: the fixed cost that ``(RSS - baseline) / model`` takes out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = """
import sys, time
t = time.time()
from crab_jax.cli.convert_weights.cli import main
if sys.argv[1] != "--baseline":
    code = main(sys.argv[1:])
else:  # import what a conversion imports, convert nothing
    import jax, flax, orbax.checkpoint, torch
    from crab_jax.cli.convert_weights.cli import family_converter
    family_converter(sys.argv[2:])  # the family's converter and everything it imports
    code = 0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print("RESULT", code, time.time() - t, hwm * 1024)
"""


def _run(argv: Sequence[str]) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True, cwd=REPO)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if out.returncode or not line or line[-1].split()[1] != "0":
        raise RuntimeError(f"{list(argv)}: failed\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    _, _, wall, rss = line[-1].split()
    return float(wall), int(rss)


def measure(argv: Sequence[str]) -> tuple[float, int]:
    """``(wall s, peak RSS bytes)`` of ``python -m tools.convert_weights ARGV`` in a fresh process."""
    return _run([str(a) for a in argv])


def baseline(family_argv: Sequence[str] = ()) -> int:
    """Peak RSS bytes of a fresh process that only imports the converter of ``family_argv``
    (e.g. ``["--family", "crab_plus"]``; empty: the default family)."""
    return _run(["--baseline", *family_argv])[1]


def rss_table(rows: Sequence[tuple[str, int, tuple[float, int]]], base: int) -> list[str]:
    """Markdown rows ``| step | model GiB | wall s | peak RSS GiB | RSS / model | (RSS - base) / model |``
    of ``(step, model bytes in the output dtype, (wall s, peak RSS bytes))``."""
    out = ["| step | model GiB | wall s | peak RSS GiB | RSS / model | (RSS - baseline) / model |",
           "|---|---|---|---|---|---|"]
    for name, model, (wall, rss) in rows:
        out.append(f"| {name} | {model / 2**30:.2f} | {wall:.1f} | {rss / 2**30:.2f} | {rss / model:.2f} | "
                   f"{(rss - base) / model:.2f} |")
    return out
