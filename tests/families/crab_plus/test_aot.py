"""Crab+'s train step compiled ahead of time for a TPU slice (``crab_jax.training.aot``) on this
CPU host: the tiny thinker with every tower scanned, sharded over a v4-8's four chips (fsdp) with
gradient accumulation (4 micro-batches) — the combination the released recipe (``configs/crab_plus_tpu_v4.py``)
compiles at full size. Needs ``libtpu`` (the ``[tpu]`` extra); skips without it."""

from __future__ import annotations

import pytest

from tests.families.crab_plus.test_train import tiny_config
from tests.training.test_aot import needs_libtpu

pytestmark = [needs_libtpu, pytest.mark.slow]  # ~1 min: one TPU compile


# remat off: XLA recomputes less than a whole forward under remat (tiny v4-8: 2.4e7 of the 3.5e7
# FLOPs the analytic recompute assumes), so the estimate is exact only without it.
# Reference attention: the AOT check resolves model.attention=auto for TPU (splash, fused for these
# 64 tokens), whose kernel's FLOPs XLA's cost analysis leaves out; the check here is the loops'.
SHARDED = {"train.global_batch": 16, "model.remat": "none", "mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1,
           "model.attention": "reference"}


def test_scanned_sharded_accumulated_step_compiles_and_its_flop_estimate_is_what_runs():
    """The estimate of what the scanned, accumulated step executes (XLA's count with its loops
    multiplied out analytically) against XLA's exact count of the same step unrolled (no scan,
    no accumulation: every op is in the program once per execution)."""
    from crab_jax.training.aot import aot_report, format_report, parse_slice

    v4_8 = parse_slice("v4-8")
    looped = aot_report(tiny_config(**SHARDED, **{"train.micro_batches": 4, "model.scan_layers": True}), v4_8)
    print(format_report(looped))
    assert looped["error"] is None and looped["mesh"]["fsdp"] == 4 and looped["memory_per_chip"]["fits"]
    unrolled = aot_report(tiny_config(**SHARDED, **{"train.micro_batches": 1, "model.scan_layers": False}), v4_8)
    exact = unrolled["xla_flops_per_chip"]
    assert unrolled["executed_flops_per_chip"] == exact
    # the loops hide a large share (negative control), the estimate puts it back (within the
    # non-matmul ops the analytic per-layer count leaves out)
    assert looped["xla_flops_per_chip"] < 0.7 * exact
    # (within 10%: the estimate takes half of XLA's count as one micro-batch, so the once-per-step
    # optimizer update is multiplied too — visible at tiny sizes, negligible at 7B; 7% here)
    assert looped["executed_flops_per_chip"] == pytest.approx(exact, rel=0.1)
    # the analytic model FLOPs (what MFU divides) are the matmuls of what runs: a little below it
    assert 0.8 * exact < looped["model_flops_per_chip"] <= exact
    assert 0 < looped["predicted_mfu"] < 1
