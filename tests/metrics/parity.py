"""Comparison bookkeeping for the metric parity tests: every case is checked, every mismatch is
reported at once, and the largest error per kernel is printed (run pytest with -s to see it)."""

from __future__ import annotations

import numpy as np

# The fixture README's tolerances: float32 scores (ratios of integer counts) and the float64 kernels
# (AVVP, c_iou, intersection_over_union).
SCORE_ATOL = 1e-6
FLOAT64_ATOL = 1e-12


class Comparisons:
    """Collects the comparisons of one test; :meth:`finish` prints the max errors and fails with
    the list of mismatches."""

    def __init__(self, title: str):
        self.title = title
        self.max_error: dict[str, float] = {}
        self.failures: list[str] = []

    def close(self, kernel: str, case: str, actual, expected, atol: float) -> None:
        """``|actual - expected| <= atol`` elementwise; NaN must sit where the reference has NaN."""
        a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
        if a.shape != e.shape:
            self.failures.append(f"{kernel} [{case}]: shape {a.shape} != expected {e.shape}")
            return
        nan_a, nan_e = np.isnan(a), np.isnan(e)
        if (nan_a != nan_e).any():
            self.failures.append(f"{kernel} [{case}]: NaN at {np.flatnonzero(nan_a).tolist()}, "
                                 f"expected at {np.flatnonzero(nan_e).tolist()}")
            return
        finite = ~nan_e
        err = float(np.abs(a[finite] - e[finite]).max()) if finite.any() else 0.0
        self.max_error[kernel] = max(self.max_error.get(kernel, 0.0), err)
        if not err <= atol:
            self.failures.append(f"{kernel} [{case}]: max |err| {err:.3e} > atol {atol:.0e} "
                                 f"(got {a.ravel()[:4].tolist()}, expected {e.ravel()[:4].tolist()})")

    def exact(self, kernel: str, case: str, actual, expected) -> None:
        a, e = np.asarray(actual), np.asarray(expected)
        self.max_error.setdefault(kernel, 0.0)
        if a.shape != e.shape or not np.array_equal(a, e):
            where = "" if a.shape != e.shape else f", {int(np.sum(a != e))} entries differ"
            self.failures.append(f"{kernel} [{case}]: not equal (shapes {a.shape} / {e.shape}{where})")
            self.max_error[kernel] = float("inf")

    def finish(self) -> None:
        for kernel, err in self.max_error.items():
            print(f"max error {self.title}/{kernel}: {err:.3e}")
        assert not self.failures, f"{len(self.failures)} mismatch(es):\n" + "\n".join(self.failures)
