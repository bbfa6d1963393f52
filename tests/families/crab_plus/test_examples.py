"""Crab+'s example builder against the original's processor outputs (thinker_av fixture):
AV-UIE v2 records over ``shared/media`` -> examples -> one collated batch equal to the batch
:func:`~crab_jax.families.crab_plus.layout.thinker_batch` makes of the fixture's own arrays.

Every size comes from the fixture (its padded length, grids, mel frames); the builder's bucket
is the smallest that holds the batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crab_jax.config.schema import get_config
from crab_jax.config.sections import RunConfig
from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.data.records.crab_plus import CRAB_PLUS_TASKS, read_crab_plus_task
from crab_jax.families.crab_plus import chat, presets
from crab_jax.families.crab_plus.batch_spec import check_batch
from crab_jax.families.crab_plus.collate import prompt_batch
from crab_jax.families.crab_plus.example_builder import example_builder
from crab_jax.families.crab_plus.frames import patch_rows, vision_inputs
from crab_jax.families.crab_plus.layout import thinker_batch
from crab_jax.families.crab_plus.tokens import base_vocab_of
from crab_jax.models.losses import IGNORE_INDEX
from tests.families.crab_plus.avuie2_layout import write_avuie2_layout
from tests.families.crab_plus.avuie2_root import fixture_records
from tests.families.crab_plus.thinker_helpers import MODEL_DIR, fixture_arrays, fixture_config

FIXTURE = "thinker_av"


@pytest.fixture(scope="module")
def built(crab_plus_fixtures_dir, crab_plus_manifest, tmp_path_factory):
    """``(cfg, arrays, builder, records, examples)`` of the fixture's samples."""
    config = crab_plus_manifest["fixtures"][FIXTURE]["config"]
    root = tmp_path_factory.mktemp("avuie2")
    records = fixture_records(root, crab_plus_fixtures_dir, config)
    cfg = fixture_config(crab_plus_fixtures_dir, crab_plus_manifest, FIXTURE)
    tokenizer = chat.load_tokenizer(crab_plus_fixtures_dir / MODEL_DIR)
    c = get_config()
    c.data.tasks = tuple(dict.fromkeys(config["tasks"]))
    data = RunConfig.from_config(c).data
    builder = example_builder(cfg, data, root, tokenizer)
    examples = [builder.build(r, i) for i, r in enumerate(records)]
    return cfg, fixture_arrays(crab_plus_fixtures_dir, FIXTURE), builder, records, examples


def _bucket(builder, examples, seq_len: int) -> Bucket:
    infos = [builder.example_plan_info(ex) for ex in examples]
    return Bucket(seq_len, max(i.fbank_frames for i in infos), max(i.media_slots for i in infos))


def test_plan_info_predicts_the_decoded_example(built):
    _, arrays, builder, records, examples = built
    for record, ex, n in zip(records, examples, arrays["sample_lengths"]):
        assert builder.plan_info(record) == builder.example_plan_info(ex)
        assert len(ex.input_ids) == int(n)


def test_collated_batch_equals_the_original_processor_batch(built):
    cfg, arrays, builder, _, examples = built
    bucket = _bucket(builder, examples, arrays["input_ids"].shape[1])
    batch = builder.collate(examples, bucket)
    spec = builder.bucket_spec(bucket, len(examples))
    expected = thinker_batch(arrays, cfg, visual_slots=spec.visual_slots, audio_chunk_slots=spec.audio_chunk_slots,
                             audio_token_slots=spec.audio_token_slots)
    assert set(batch) == set(expected) | {"task_id"}
    for key, want in expected.items():
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(batch[key], want, err_msg=key)
        else:  # pixel rows exact (uint8 frames); log-mel within the feature test's tolerance
            np.testing.assert_allclose(batch[key], want, rtol=0, atol=2e-5, err_msg=key)
    assert set(spec.shapes(cfg)) == set(batch)
    for key, (shape, dtype) in spec.shapes(cfg).items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key


def test_bigger_bucket_only_pads(built):
    """A longer bucket adds pad slots / empty media slots; the real rows do not move."""
    cfg, arrays, builder, _, examples = built
    tight = _bucket(builder, examples, arrays["input_ids"].shape[1])
    loose = Bucket(tight.seq_len + 8, tight.fbank_frames + 300, tight.media_slots + 1)
    a, b = builder.collate(examples, tight), builder.collate(examples, loose)
    s = tight.seq_len
    for key in ("input_ids", "labels", "attention_mask"):
        np.testing.assert_array_equal(b[key][:, :s], a[key], err_msg=key)
    # audio rows follow the visual slots: one more slot moves them by one slice's tokens
    audio = a["input_ids"] == cfg.tokens.audio
    shift = np.where(audio, cfg.tokens_per_slice, 0)
    np.testing.assert_array_equal(b["media_index"][:, :s], a["media_index"] + shift)
    np.testing.assert_array_equal(b["pixel_slices"][:, : a["pixel_slices"].shape[1]], a["pixel_slices"])
    assert not b["pixel_slices"][:, a["pixel_slices"].shape[1]:].any()
    assert (b["attention_mask"][:, s:] == 0).all()


def test_fillers_and_blank_add_no_labels(built):
    _, arrays, builder, _, examples = built
    bucket = _bucket(builder, examples, arrays["input_ids"].shape[1])
    batch = builder.collate([builder.filler(examples[0]), builder.blank()], bucket)
    assert (batch["labels"] == IGNORE_INDEX).all()
    assert builder.fits(examples[0], bucket) is None
    small = dataclasses.replace(bucket, seq_len=len(examples[0].input_ids) - 1)
    assert "tokens" in builder.fits(examples[0], small)


def test_prompt_batch_is_the_generation_prompt(built, crab_plus_manifest):
    """Cutting a training batch gives the test template's prompt (generation fixture ids) and
    the rows' rope_deltas as the original computes them for that prompt."""
    cfg, arrays, builder, _, examples = built
    bucket = _bucket(builder, examples, arrays["input_ids"].shape[1])
    batch = builder.collate(examples, bucket)
    for padding in ("left", "right"):
        cut = prompt_batch(batch, cfg, padding=padding)
        for i, ex in enumerate(examples):
            labelled = np.flatnonzero(ex.labels != IGNORE_INDEX)
            prompt = ex.input_ids[: labelled[0] + 1]
            row = cut.batch["input_ids"][i][cut.batch["attention_mask"][i].astype(bool)]
            np.testing.assert_array_equal(row, prompt)
            np.testing.assert_array_equal(cut.answers[i], ex.input_ids[labelled[0] + 1: labelled[-1] + 1])
            # the same prompt collated alone: its positions and decode offset
            alone = thinker_batch({"input_ids": prompt[None].astype(np.int64),
                                   "attention_mask": np.ones((1, len(prompt)), np.int64),
                                   **_media_inputs(builder, ex)}, cfg)
            mask = cut.batch["attention_mask"][i].astype(bool)
            np.testing.assert_array_equal(cut.batch["position_ids"][i][:, mask], alone["position_ids"][0])
            pads = int((~mask).sum())
            assert int(cut.batch["rope_deltas"][i, 0]) == int(alone["rope_deltas"][0, 0]) - pads
        assert cut.has_answer.all()


def _media_inputs(builder, ex) -> dict:
    rows = patch_rows(ex.frames, builder.settings.patch)
    out = vision_inputs([rows] if ex.visual_kind == "image" else [], [rows] if ex.visual_kind == "video" else [],
                        builder.settings.patch)
    out.update(input_features=ex.mel[None], feature_attention_mask=np.ones((1, ex.mel_frames), np.int32))
    return out


def test_missing_video_is_a_bad_record_naming_it(built, tmp_path):
    cfg, _, builder, records, _ = built
    video_record = next(r for r in records if r.videos)
    missing = dataclasses.replace(video_record, videos=("AVUIE_2/ave/video/not_there.mp4",))
    with pytest.raises(BadRecordError, match="not_there.mp4"):
        builder.build(missing, 0)
    with pytest.raises(BadRecordError, match="data.tasks"):
        builder.build(dataclasses.replace(video_record, task="ks"), 0)


@pytest.fixture(scope="module")
def every_task(crab_plus_fixtures_dir, tmp_path_factory):
    """``(builder, records)``: one record per task and split of the test-made AV-UIE v2 layout,
    the ``tiny`` preset on the fixture's tokenizer."""
    root = tmp_path_factory.mktemp("every_task")
    written = write_avuie2_layout(root, crab_plus_fixtures_dir.parent.parent / "media")
    tokenizer = chat.load_tokenizer(crab_plus_fixtures_dir / MODEL_DIR)
    c = get_config()
    c.model.family, c.model.preset, c.data.tasks = "crab_plus", "tiny", CRAB_PLUS_TASKS
    run = RunConfig.from_config(c)
    cfg = presets.model_config(run.model, base_vocab_of(tokenizer))
    records = [r for task, splits in written.items() for mode in splits
               for r in read_crab_plus_task(task, mode, root).records]
    return example_builder(cfg, run.data, root, tokenizer), records


def test_every_task_builds_in_both_modes_and_collates(every_task):
    builder, records = every_task
    examples = []
    for i, record in enumerate(records):
        ex = builder.build(record, i)
        assert builder.plan_info(record) == builder.example_plan_info(ex), record.source
        supervised = (ex.labels != IGNORE_INDEX).any()
        assert supervised == (record.mode == "train"), record.source
        expected_kind = "image" if record.image_path else "video"
        assert ex.visual_kind == expected_kind
        examples.append(ex)
    infos = [builder.example_plan_info(ex) for ex in examples]
    bucket = Bucket(max(i.expanded_len for i in infos), max(i.fbank_frames for i in infos),
                    max(i.media_slots for i in infos))
    batch = builder.collate(examples, bucket)
    check_batch(batch, builder.bucket_spec(bucket, len(examples)), builder.cfg)
    # a2v: two 10-frame videos = 10 slices; emotion tasks 4 frames = 2; image tasks 1
    slices = {r.task: i.media_slots for r, i in zip(records, infos)}
    assert slices["a2v"] == 2 * slices["ave"] == 10 and slices["meld"] == 2 and slices["s4"] == 1
