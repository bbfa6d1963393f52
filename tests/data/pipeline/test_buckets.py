"""Buckets and epoch plans: every record once per epoch, homogeneous batches, smallest fit."""

from __future__ import annotations

import numpy as np

from crab_jax.data.pipeline.buckets import Bucket, PlanInfo, assign_buckets, plan_epoch


def test_epoch_plan_covers_each_record_once_with_homogeneous_buckets():
    rng = np.random.default_rng(0)
    kinds = [Bucket(128, 96), Bucket(256, 96), Bucket(256, 192), None]
    buckets = [kinds[int(k)] for k in rng.integers(0, 4, size=101)]
    plans = [plan_epoch(buckets, 8, seed=1, epoch=e) for e in (0, 1)]
    for plan in plans:
        real = [i for pb in plan for i, f in zip(pb.records, pb.filler) if not f]
        assert sorted(real) == [i for i, b in enumerate(buckets) if b is not None]
        for pb in plan:
            assert len(pb.records) == 8 and all(buckets[i] == pb.bucket for i in pb.records)
        partial = [pb for pb in plan if any(pb.filler)]
        assert len(partial) <= 3 and len({pb.bucket for pb in partial}) == len(partial)
    assert plans[0] == plan_epoch(buckets, 8, seed=1, epoch=0)
    assert plans[0] != plans[1] and len(plans[0]) == len(plans[1])


def test_assign_buckets_smallest_fit_and_too_long():
    infos = [PlanInfo(100, 96), PlanInfo(129, 96), PlanInfo(200, 192), PlanInfo(300, 96), PlanInfo(50, 0)]
    buckets, errors = assign_buckets(infos, [f"r#{i}" for i in range(5)], (128, 256), 32)
    assert buckets[:3] == [Bucket(128, 96), Bucket(256, 96), Bucket(256, 192)]
    assert buckets[3] is None and "r#3" in str(errors[0]) and "largest bucket" in str(errors[0])
    assert buckets[4] == Bucket(128, 96)  # no audio: joins the most common fbank length
