"""Packed rows (several samples per row) give each sample exactly its unpacked numbers: the same
logits at its tokens, the same NLL sums, the same loss and gradients (the fused attention with
segment ids: tests/models/test_llama.py); the pipeline packs the packable records and keeps the rest in their buckets."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.config.loader import load_config_file
from crab_jax.data.pipeline import grain as G
from crab_jax.config.sections import PackingConfig as Packing
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.data.pipeline.grain import packing_of
from crab_jax.families.crab.batch_spec import check_batch
from crab_jax.families.crab.examples import example_plan_info
from crab_jax.families.crab.model import Crab
from crab_jax.training.setup import resolve
from tests.data.pipeline.crab_data import builder_of, clean_data, iterator

clean = pytest.fixture(scope="module", name="clean")(clean_data)
ROWS = 2  # packed rows of the test batch


@pytest.fixture(scope="module")
def samples(clean):
    """(builder, CrabConfig, packable examples: an even number, of at least two tasks)."""
    root, records, errors, tok, cfg, settings = clean
    builder = builder_of(tok, cfg, settings)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if builder.plan_info(r).packable:
            by_task.setdefault(r.task, []).append(i)
    # Round robin over the tasks: rows mix tasks (and so media sizes and audio lengths).
    order = [i for group in zip(*by_task.values()) for i in group]
    exs = [builder.build(records[i], i) for i in order[:2 * ROWS]]
    assert len(exs) == 2 * ROWS and len({e.task_id for e in exs}) >= 2
    return builder, cfg, exs


def batches(builder, exs):
    """(unpacked batch of ``exs``, the same examples packed ``len(exs) // ROWS`` to a row)."""
    infos = [example_plan_info(e, builder.settings) for e in exs]
    fbank = max(i.fbank_frames for i in infos)
    unpacked = builder.collate(exs, Bucket(max(i.expanded_len for i in infos), fbank))
    per_row = len(exs) // ROWS
    rows = [exs[k * per_row:(k + 1) * per_row] for k in range(ROWS)]
    row_infos = [infos[k * per_row:(k + 1) * per_row] for k in range(ROWS)]
    bucket = Bucket(max(sum(i.expanded_len for i in r) for r in row_infos) + 3, fbank, 0, per_row + 1,
                    max(sum(i.frames for i in r) for r in row_infos), max(sum(i.audio_segments for i in r)
                                                                          for r in row_infos))
    packed = builder.collate_packed(rows, bucket)
    check_batch(packed, builder.bucket_spec(bucket, ROWS), len(builder.settings.mask_token_ids), source="packed")
    return unpacked, packed, infos


def sample_rows(unpacked, packed, i, per_row):
    """Token slots of sample ``i`` in the unpacked batch (its row's real tokens) and in the packed one."""
    u = np.flatnonzero(unpacked["attention_mask"][i])
    p = np.flatnonzero(packed["segment_ids"][i // per_row] == i % per_row + 1)
    return u, p


def test_packed_rows_give_every_sample_its_unpacked_logits_sums_loss_and_gradients(samples):
    builder, cfg, exs = samples
    unpacked, packed, infos = batches(builder, exs)
    per_row = len(exs) // ROWS
    model = Crab(cfg, rngs=nnx.Rngs(0))
    model.eval()

    # The gradients of what trains (the LLM with its adapters, the projectors that feed it): the
    # frozen encoders' backward and the seg branch (packed rows have no mask) would only add compile time.
    trained = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("llm"), nnx.PathContains("vl_projector"),
                                         nnx.PathContains("al_projector")))

    @nnx.jit
    def run(m, batch):
        def loss(m):
            out = m(batch, with_seg=False)
            return m.total_loss(out), out
        return nnx.value_and_grad(loss, argnums=nnx.DiffState(0, trained), has_aux=True)(m)

    (loss_u, out_u), g_u = run(model, {k: jnp.asarray(v) for k, v in unpacked.items()})
    (loss_p, out_p), g_p = run(model, {k: jnp.asarray(v) for k, v in packed.items()})
    assert out_p.lm_sums[0].shape == (ROWS, per_row + 1)
    for i in range(len(exs)):
        u, p = sample_rows(unpacked, packed, i, per_row)
        assert len(u) == len(p) == infos[i].expanded_len
        np.testing.assert_allclose(np.asarray(out_p.logits)[i // per_row, p], np.asarray(out_u.logits)[i, u],
                                   atol=2e-5, rtol=1e-5, err_msg=f"sample {i}")
        for got, want in zip(out_p.lm_sums, out_u.lm_sums):
            np.testing.assert_allclose(float(got[i // per_row, i % per_row]), float(want[i]), rtol=1e-5)
    assert np.all(np.asarray(out_p.lm_sums[1])[:, per_row] == 0)  # the spare segment slot is empty
    np.testing.assert_allclose(float(out_p.lm_loss), float(out_u.lm_loss), rtol=1e-5)
    np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
    np.testing.assert_array_equal(packed["segment_task_id"][:, :per_row].reshape(-1), [e.task_id for e in exs])
    leaves_u, leaves_p = jax.tree.leaves(nnx.state(g_u)), jax.tree.leaves(nnx.state(g_p))
    scale = max(float(jnp.max(jnp.abs(x))) for x in leaves_u)
    assert scale > 0 and len(leaves_u) == len(leaves_p)
    for a, b in zip(leaves_u, leaves_p):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale)


def test_the_pipeline_packs_the_packable_records_and_keeps_the_others_in_their_buckets(clean):
    root, records, errors, tok, cfg, settings = clean
    builder = builder_of(tok, cfg, settings)
    infos = [builder.plan_info(r) for r in records]
    it = iterator(clean, packing=Packing(seq_len=320, samples=4, frame_slots=0, audio_slots=0), num_epochs=1,
                  shuffle=False)
    specs = it.bucket_specs()
    packed_specs = [s for s in specs if s.segments]
    assert len(packed_specs) == 1 and packed_specs[0].seq_len == 320
    seen, packed_batches = [], 0
    for batch in it:
        spec = next(s for s in specs if s.seq_len == batch["input_ids"].shape[1]
                    and bool(s.segments) == ("segment_ids" in batch))
        check_batch(batch, spec, len(settings.mask_token_ids))
        if "segment_ids" in batch:
            packed_batches += 1
            assert not batch["is_seg"].any()
            assert (batch["segment_ids"].max(1) >= 1).all()
        seen.append(it.last_report)
    assert packed_batches > 0
    expected_packed = sum(1 for i in infos if i.packable and i.expanded_len <= 320)
    assert sum(r.get("packed_samples", 0) for r in seen) == expected_packed
    assert sum(r["seen"] for r in seen) == len(records)
    assert it.stats()["seen"] == len(records) and it.stats()["bad"] == 0


def test_a_builder_that_cannot_pack_is_refused_naming_the_key(clean):
    class NoPacking:
        pass

    source = types.SimpleNamespace(builder=NoPacking())
    with pytest.raises(ValueError, match=r"data\.packing\.seq_len=64: NoPacking cannot pack"):
        G.make_iterator(source, global_batch=2, seq_buckets=(64,), seed=0, max_bad_fraction=0.1,
                        fallback_fbank_frames=16, packing=Packing(64, 2, 0, 0))


def test_packing_config_is_checked():
    data = resolve(load_config_file("configs/tiny.py"))[0].data
    assert packing_of(data) is None
    on = dataclasses.replace(data, packing=dataclasses.replace(data.packing, seq_len=512, samples=0))
    with pytest.raises(ValueError, match=r"data\.packing\.samples=0"):
        packing_of(on)
