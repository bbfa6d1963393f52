"""Input pipeline: examples, buckets, epoch plans, bad-record accounting, sharding, resume."""

from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import pytest

from crab_jax.families.crab import examples as E
from crab_jax.data.pipeline import grain as G
from crab_jax.families.crab import prompts as P
from crab_jax.families.crab.batch_spec import check_batch
from crab_jax.data.pipeline.buckets import Bucket, CollateConfig, assign_buckets, plan_epoch
from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.readers import load_answer

TASKS = ("ave", "avqa", "s4", "arig")
BUCKETS = (112, 160)


def word_tokenizer(records, root):
    """A word-level LLaMA-like tokenizer over every word of the records' prompts and targets
    (built here, nothing downloaded), with Crab's 17 tokens added after the words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.BertPreTokenizer()
    words = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"])}
    for r in records:
        for text in P.build_crab_text(r, load_answer(r, root)):
            for t in P.SPECIAL_TOKENS + P.MASK_TOKENS + ("<s>", "</s>"):
                text = text.replace(t, " ")
            for w, _ in pre.pre_tokenize_str(text):
                words.setdefault(w, len(words))
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<s>", "</s>"]})
    P.add_multimodal_tokens(fast)
    return fast, len(words)


def make_dataset(root: pathlib.Path, num_train: int = 6):
    from crab_jax.data.synthetic import generate as synthetic

    synthetic.generate(root, 0, num_train=num_train, num_test=1, tasks=TASKS, progress=False)
    return root


def setup_for(root, frame_slots=10, audio_slots=10):
    """(records, reader errors, tokenizer, CrabConfig, ExampleSettings) of a synthetic root."""
    from crab_jax.families.crab.presets import tiny_crab_config

    records, errors = G.read_records(root, TASKS)
    tok, base = word_tokenizer(records, root)
    cfg = tiny_crab_config(base_vocab=base)
    settings = E.settings_from(cfg, root, TASKS, frame_slots=frame_slots, audio_slots=audio_slots)
    return records, errors, tok, cfg, settings


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("clean"))
    return (root,) + setup_for(root)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """Synthetic data with three kinds of bad records mixed in."""
    root = make_dataset(tmp_path_factory.mktemp("dirty"))
    ann = root / "ave" / "valid_train_samples.json"
    rows = json.loads(ann.read_text())
    ann.write_text(json.dumps(rows + [{"vid": "no-event-field", "start_time": 0, "end_time": 1}]))  # reader error
    (root / "ave" / "audio_data" / "ave-train-00001.mp3").write_bytes(b"")  # found by the plan index
    s4 = json.loads((root / "avs" / "s4_samples.json").read_text())
    uid = [r["uid"] for r in s4 if r["split"] == "train"][2]
    (root / "avs" / "v1s" / uid / "labels_semantic" / "0.png").write_bytes(b"")  # found while decoding
    records, errors, tok, cfg, settings = setup_for(root)
    bad_sources = {r.source for r in records
                   if "ave-train-00001" in str(r.audios) or (r.task == "s4" and uid in str(r.mask_path))}
    assert len(bad_sources) == 2 and len(errors) == 1
    return root, records, errors, tok, cfg, settings, bad_sources


def iterator(data, shard=None, **kw):
    root, records, errors, tok, cfg, settings = data[:6]
    kw = dict(dict(global_batch=4, seq_buckets=BUCKETS, seed=3, max_bad_fraction=0.5, workers=0), **kw)
    return G.make_iterator(G.RawRecordSource(records, tok, settings), settings, CollateConfig.from_crab(cfg),
                           shard_options=shard, initial_bad=errors, **kw)


def shard(i, n):
    import grain

    return grain.sharding.ShardOptions(shard_index=i, shard_count=n)


# ------------------------------------------------------------------------- examples


def test_seg_task_constants_match_the_model():
    from crab_jax.families.crab import model as crab

    assert E.SEG_TASKS == crab.SEG_TASKS and E.MULTICLASS_SEG_TASKS == crab.MULTICLASS_SEG_TASKS


def test_example_follows_record_specs_and_plan_info_is_exact(clean):
    root, records, _, tok, cfg, settings = clean
    by_task = {}
    for r in records:
        by_task.setdefault(r.task, r)
    for task, r in by_task.items():
        ex = E.build_example(r, tok, settings)
        info = E.plan_info(r, tok, settings)
        assert info == E.example_plan_info(ex, settings), task
        assert ex.fbank.shape[1] % 16 == 0 and ex.fbank.shape[2] == 128
        assert ex.frames.dtype == np.uint8 and ex.frames.shape[1:] == (settings.image_size,) * 2 + (3,)
    # AVE: 10 frames of the video file and 10 clip segments; ARIG: one image and tot=5 segments.
    assert E.build_example(by_task["ave"], tok, settings).frames.shape[0] == by_task["ave"].num_frames
    arig = E.build_example(by_task["arig"], tok, settings)
    assert arig.frames.shape[0] == 1 and arig.fbank.shape[0] == by_task["arig"].audio.tot
    s4 = E.build_example(by_task["s4"], tok, settings)
    assert s4.is_seg and not s4.is_avss and set(np.unique(s4.gt_mask)) <= {0.0, 1.0} and s4.gt_mask.max() == 1
    assert not arig.is_seg and not arig.gt_mask.any()


def test_fbank_trim_keeps_whole_beats_patches_and_rejects_short_segments():
    fb = np.random.default_rng(0).normal(size=(3, 98, 128)).astype(np.float32)
    out = E.trim_to_patches(fb, "x.wav")
    assert out.shape == (3, 96, 128) and np.array_equal(out, fb[:, :96])
    assert E.trim_to_patches(fb[:, :16], "x.wav").shape == (3, 16, 128)
    with pytest.raises(BadRecordError, match="x.wav.*too short"):
        E.trim_to_patches(fb[:, :15], "x.wav")


def test_too_many_media_for_the_slots_is_a_bad_record(clean):
    root, records, _, tok, cfg, _ = clean
    small = E.settings_from(cfg, root, TASKS, frame_slots=4, audio_slots=10)
    ave = next(r for r in records if r.task == "ave")
    with pytest.raises(BadRecordError, match="data.frame_slots=4"):
        E.plan_info(ave, tok, small)


# --------------------------------------------------------------------------- plans


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
    infos = [E.PlanInfo(100, 96), E.PlanInfo(129, 96), E.PlanInfo(200, 192), E.PlanInfo(300, 96), E.PlanInfo(50, 0)]
    buckets, errors = assign_buckets(infos, [f"r#{i}" for i in range(5)], (128, 256), 32)
    assert buckets[:3] == [Bucket(128, 96), Bucket(256, 96), Bucket(256, 192)]
    assert buckets[3] is None and "r#3" in str(errors[0]) and "largest bucket" in str(errors[0])
    assert buckets[4] == Bucket(128, 96)  # no audio: joins the most common fbank length


# ------------------------------------------------------------------------ iterator


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
    with pytest.raises(G.TooManyBadRecordsError) as e:
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
    import jax
    from jax.sharding import Mesh, PartitionSpec

    batch = next(iterator(clean))
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    out = G.to_global(batch, mesh, PartitionSpec("data"))
    assert all(out[k].shape == batch[k].shape and np.array_equal(np.asarray(out[k]), batch[k]) for k in batch)
