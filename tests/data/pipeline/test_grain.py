"""The Grain pipeline over Crab's example builder: the batch contract, each record once per
epoch over processes, bad-record accounting, resume, worker processes, global arrays."""

from __future__ import annotations

import collections
import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from crab_jax.data.pipeline.iterator import TooManyBadRecordsError
from crab_jax.families.crab.batch_spec import check_batch
from crab_jax.parallel.mesh import to_global
from tests.data.pipeline.crab_data import clean_data, dirty_data, iterator, shard

clean = pytest.fixture(scope="module", name="clean")(clean_data)
dirty = pytest.fixture(scope="module", name="dirty")(dirty_data)


def test_batches_follow_the_batch_contract_and_run_through_check_batch(clean):
    it = iterator(clean, num_epochs=1)
    specs = {(s.seq_len, s.fbank_frames): s for s in it.bucket_specs()}
    n = 0
    for batch in it:
        spec = specs[tuple(it.last_report["bucket"])]
        check_batch(batch, spec, len(clean[4].mask_token_ids))
        lab = batch["labels"]
        assert ((lab != -100) <= (batch["attention_mask"] == 1)).all()
        assert (batch["media_index"][batch["attention_mask"] == 0] == -1).all()
        seg = batch["is_seg"]
        ids = np.take_along_axis(batch["input_ids"], batch["mask_positions"] + 1, axis=1)
        assert np.isin(ids[seg], clean[4].mask_token_ids).all()  # offset -1: the token before each <mask_k>
        n += 1
    assert n == it.batches_per_epoch and it.stats()["bad"] == 0


def _epoch_records(its, epochs):
    seen = [collections.Counter() for _ in range(epochs)]
    for it in its:
        for e in range(epochs):
            for _ in range(it.batches_per_epoch):
                next(it)
                seen[e].update(i for i in it.last_report["records"] if i >= 0)
    return seen


def test_every_valid_record_once_per_epoch_two_processes_with_bad_records(dirty):
    root, records, errors, tok, cfg, settings, bad_sources = dirty
    valid = {i for i, r in enumerate(records) if r.source not in bad_sources}
    its = [iterator(dirty, shard(p, 2)) for p in range(2)]
    for seen in _epoch_records(its, 2):
        assert set(seen) == valid and set(seen.values()) == {1}
    st = its[0].stats()
    assert st["index_bad"] == 2  # the annotation entry and the 0-byte audio
    assert st["bad_by_reason"].get("annotation") == 1 and st["bad_by_reason"].get("empty_file", 0) >= 1
    decode_bad = sum(it.stats()["bad"] for it in its)
    assert decode_bad == 2  # the 0-byte mask, once per epoch, in one of the two processes
    assert any("labels_semantic/0.png" in x for it in its for x in it.stats()["bad_examples"])


def test_resume_mid_epoch_gives_the_same_batches(dirty):
    full = iterator(dirty, shard(1, 2))
    want = [next(full) for _ in range(5)]
    first = iterator(dirty, shard(1, 2))
    got = [next(first) for _ in range(2)]
    state = json.loads(json.dumps(first.get_state()))  # JSON round trip, as Orbax stores it
    resumed = iterator(dirty, shard(1, 2))
    resumed.set_state(state)
    got += [next(resumed) for _ in range(3)]
    for a, b in zip(want, got):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.stats()["batches"] == 5
    with pytest.raises(ValueError, match="seed"):
        iterator(dirty, shard(1, 2), seed=4).set_state(state)


def test_bad_fraction_over_the_limit_stops_with_a_report(dirty):
    with pytest.raises(TooManyBadRecordsError) as e:
        iterator(dirty, max_bad_fraction=0.01)
    assert "ave-train-00001.mp3" in str(e.value) and "max_bad_fraction" in str(e.value)


def test_sample_longer_than_the_largest_bucket_is_counted(clean):
    it = iterator(clean, seq_buckets=(112,), max_bad_fraction=1.0)
    st = it.stats()
    assert st["bad_by_reason"].get("too_long", 0) > 0
    assert all(s.seq_len == 112 for s in it.bucket_specs())


def test_worker_processes_give_the_same_batches(clean):
    a, b = iterator(clean, workers=0), iterator(clean, workers=2)
    for _ in range(2):
        x, y = next(a), next(b)
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_to_global_single_process(clean):
    batch = next(iterator(clean))
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    out = to_global(batch, {k: NamedSharding(mesh, PartitionSpec("data")) for k in batch})
    assert all(out[k].shape == batch[k].shape and np.array_equal(np.asarray(out[k]), batch[k]) for k in batch)


def test_tasks_with_different_audio_lengths_share_batches(clean):
    """Buckets are keyed by token length only: AVQA's 2-s windows and the 1-s segments of the
    other tasks meet in one batch (padded to its longest, ``fbank_valid`` says how much is real),
    and each token bucket has one shape."""
    import dataclasses

    from crab_jax.data.records.record import AudioSpec

    root, records, errors, tok, cfg, settings = clean
    # The synthetic clips are short: AVQA as one whole-clip segment gives it a longer fbank.
    records = [dataclasses.replace(r, audio=AudioSpec("clip", 1)) if r.task == "avqa" else r for r in records]
    it = iterator((root, records, errors, tok, cfg, settings), num_epochs=1)
    lengths_by_task = {}
    for i, r in enumerate(records):
        lengths_by_task.setdefault(r.task, set()).add(it.decoder.source.plan_info(i).fbank_frames)
    assert len(set().union(*lengths_by_task.values())) > 1, lengths_by_task
    specs = it.bucket_specs()
    assert len({s.seq_len for s in specs}) == len(specs)
    tasks = settings.tasks
    mixed = 0
    for batch in it:
        valid = batch["fbank_valid"]
        assert valid.max() == batch["fbank"].shape[2]
        for i in range(valid.shape[0]):  # frames past fbank_valid are zero padding
            for s in range(valid.shape[1]):
                assert not batch["fbank"][i, s, valid[i, s]:].any()
        lengths = {int(v[v > 0].max()) for v in valid if (v > 0).any()}
        if len(lengths) > 1:
            mixed += 1
            assert "avqa" in {tasks[t] for t in batch["task_id"]}
    assert mixed > 0, "no batch mixed tasks of different audio lengths"
