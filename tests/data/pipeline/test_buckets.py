"""Buckets and epoch plans: every record once per epoch, one shape per batch, smallest fit."""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.config.sections import PackingConfig as Packing
from crab_jax.data.pipeline.buckets import (Bucket, PlanInfo, assign_buckets, batches_per_epoch, plan_epoch,
                                            plan_items)


def test_epoch_plan_covers_each_record_once_with_homogeneous_buckets():
    rng = np.random.default_rng(0)
    kinds = [Bucket(128, 96), Bucket(256, 96), Bucket(256, 192), None]
    buckets = [kinds[int(k)] for k in rng.integers(0, 4, size=101)]
    items = plan_items(buckets, [PlanInfo(10, 96)] * len(buckets), 8, seed=1)  # no packing: a row per record
    assert items == [(b, (i,)) for i, b in enumerate(buckets) if b is not None]
    plans = [plan_epoch(items, 8, seed=1, epoch=e) for e in (0, 1)]
    for plan in plans:
        real = [i for pb in plan for row, f in zip(pb.records, pb.filler) if not f for i in row]
        assert sorted(real) == [i for i, b in enumerate(buckets) if b is not None]
        for pb in plan:
            assert len(pb.records) == 8 and all(buckets[i] == pb.bucket for row in pb.records for i in row)
        partial = [pb for pb in plan if any(pb.filler)]
        assert len(partial) <= 3 and len({pb.bucket for pb in partial}) == len(partial)
    assert plans[0] == plan_epoch(items, 8, seed=1, epoch=0)
    assert plans[0] != plans[1] and len(plans[0]) == len(plans[1])


def _packable(rng, n):
    return [PlanInfo(int(rng.integers(20, 120)), 96, frames=int(rng.integers(0, 6)),
                     audio_segments=int(rng.integers(0, 4)), packable=bool(rng.random() < 0.8)) for _ in range(n)]


def test_packed_rows_hold_every_packable_record_once_within_each_budget():
    rng = np.random.default_rng(1)
    infos = _packable(rng, 200)
    infos[3] = PlanInfo(300, 96, packable=True)  # longer than a packed row: keeps its token bucket
    buckets, _ = assign_buckets(infos, [f"r#{i}" for i in range(len(infos))], (128, 512), 16)
    packing = Packing(seq_len=256, samples=4, frame_slots=0, audio_slots=0)
    items = plan_items(buckets, infos, 8, seed=5, packing=packing)
    packed = [(b, row) for b, row in items if b.packed]
    assert {b for b, _ in packed} == {packed[0][0]}  # one packed bucket
    bucket = packed[0][0]
    assert (bucket.seq_len, bucket.segments) == (256, 4) and 0 < bucket.frame_slots <= 4 * 5
    in_rows = sorted(i for _, row in packed for i in row)
    assert in_rows == [i for i, x in enumerate(infos) if x.packable and x.expanded_len <= 256]
    for _, row in packed:
        assert 1 <= len(row) <= 4
        assert sum(infos[i].expanded_len for i in row) <= 256
        assert sum(infos[i].frames for i in row) <= bucket.frame_slots
        assert sum(infos[i].audio_segments for i in row) <= bucket.audio_slots
    unpacked = sorted(row[0] for b, row in items if not b.packed)
    assert unpacked == sorted(set(range(len(infos))) - set(in_rows))
    assert len(packed) < len(in_rows) / 2  # rows do hold several samples
    # The same rows whatever the epoch (packed once per run), the batch order changes per epoch.
    assert plan_items(buckets, infos, 8, seed=5, packing=packing) == items
    plans = [plan_epoch(items, 8, seed=5, epoch=e) for e in (0, 1)]
    assert len(plans[0]) == len(plans[1]) == batches_per_epoch(items, 8) and plans[0] != plans[1]


def test_packing_budgets_from_the_config_and_a_sample_over_them_is_named():
    infos = [PlanInfo(40, 96, frames=3, audio_segments=2, packable=True) for _ in range(10)]
    buckets = [Bucket(128, 96)] * 10
    items = plan_items(buckets, infos, 2, 0, Packing(256, 8, frame_slots=6, audio_slots=10))
    rows = [row for b, row in items if b.packed]
    assert all(len(row) == 2 for row in rows)  # the frame budget (6) closes each row after two samples
    with pytest.raises(ValueError, match=r"record 0: 3 frames"):
        plan_items(buckets, infos, 2, 0, Packing(256, 8, frame_slots=2, audio_slots=10))


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
