"""Buckets and epoch plans: every record once per epoch, one shape per batch, smallest fit."""

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


def test_assign_buckets_smallest_fit_too_long_and_one_fbank_length_per_token_bucket():
    infos = [PlanInfo(100, 96), PlanInfo(129, 96), PlanInfo(200, 192), PlanInfo(300, 96), PlanInfo(50, 0),
             PlanInfo(20, 0)]
    buckets, errors = assign_buckets(infos, [f"r#{i}" for i in range(6)], (32, 128, 256), 16)
    # Keyed by token length only: the 96- and 192-frame records of bucket 256 share its longest
    # fbank length (the shorter audio is padded), so tasks mix within batches.
    assert buckets[:3] == [Bucket(128, 96), Bucket(256, 192), Bucket(256, 192)]
    assert buckets[3] is None and "r#3" in str(errors[0]) and "largest bucket" in str(errors[0])
    assert buckets[4] == Bucket(128, 96)  # no audio: the bucket's length
    assert buckets[5] == Bucket(32, 16)  # a bucket without audio: the fallback
    assert len({b.seq_len for b in buckets if b}) == len({b for b in buckets if b})  # one shape per token bucket
