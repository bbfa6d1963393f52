"""Crab+ records through ``prepare`` (ArrayRecord shards) and the data checker: the same examples
and batches as decoding on the fly; a record with a missing clip skipped and named."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from crab_jax.config.schema import get_config
from crab_jax.config.sections import RunConfig
from crab_jax.data.pipeline import grain as G
from crab_jax.data.pipeline.record_source import RawRecordSource
from crab_jax.data.prepared import array_record as A
from crab_jax.data.prepared import check as C
from crab_jax.data.prepared import prepare as PR
from crab_jax.data.records.crab_plus import read_crab_plus_records
from crab_jax.families.crab_plus import chat, presets
from crab_jax.families.crab_plus.example_builder import example_builder
from crab_jax.families.crab_plus.tokens import base_vocab_of
from tests.families.crab_plus.avuie2_layout import write_avuie2_layout
from tests.families.crab_plus.thinker_helpers import MODEL_DIR

TASKS = ("a2v", "meld", "ave", "s4", "arig")
MISSING = "not_there.mp4"


@pytest.fixture(scope="module")
def data(crab_plus_fixtures_dir, tmp_path_factory):
    """``(root, records, builder(tokenizer), builder(None), prepared folder, prepare result)``."""
    pytest.importorskip("tensorflow_datasets")
    root = tmp_path_factory.mktemp("avuie2")
    write_avuie2_layout(root, crab_plus_fixtures_dir.parent.parent / "media", TASKS)
    ave = root / "AVUIE_2" / "ave" / "train.json"
    entries = json.loads(ave.read_text())
    ave.write_text(json.dumps(entries + [{**entries[0], "video_path": MISSING}]))
    records, errors = read_crab_plus_records(root, TASKS, "train")
    assert not errors
    tokenizer = chat.load_tokenizer(crab_plus_fixtures_dir / MODEL_DIR)
    c = get_config()
    c.model.family, c.model.preset, c.data.tasks = "crab_plus", "tiny", TASKS
    run = RunConfig.from_config(c)
    cfg = presets.model_config(run.model, base_vocab_of(tokenizer))
    builder = example_builder(cfg, run.data, root, tokenizer)
    stored = example_builder(cfg, run.data, None)
    out = tmp_path_factory.mktemp("prepared")
    result = PR.prepare(records, builder, out, progress=False)
    return root, records, builder, stored, out, result


def test_prepare_skips_the_missing_clip_and_stores_the_rest(data):
    _, records, builder, stored, out, result = data
    assert result["written"] == len(records) - 1
    ((path, reason),) = result["bad"]
    assert path.endswith(MISSING) and reason
    src = A.PreparedSource(out, stored)
    by_source = {r.source: r for r in records}
    for k in range(len(src)):
        got = src.example(k)
        want = builder.build(by_source[src.sources[k]], k)
        assert got.source == want.source and got.visual_kind == want.visual_kind and got.task_id == want.task_id
        for field in ("input_ids", "labels", "frames", "mel"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
        assert src.plan_info(k) == builder.plan_info(by_source[src.sources[k]])


def test_pipeline_over_prepared_data_matches_raw(data):
    _, records, builder, stored, out, _ = data
    src = A.PreparedSource(out, stored)
    good = [next(r for r in records if r.source == s) for s in src.sources]
    kw = dict(global_batch=2, seq_buckets=(512,), seed=3, max_bad_fraction=1.0, fallback_fbank_frames=1)
    a, b = G.make_iterator(src, **kw), G.make_iterator(RawRecordSource(good, builder), **kw)
    for _ in range(a.batches_per_epoch):
        x, y = next(a), next(b)
        assert set(x) == set(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_prepared_data_refuses_other_settings(data):
    _, _, builder, stored, out, _ = data
    other = dataclasses.replace(stored, settings=dataclasses.replace(stored.settings, frame_size=112))
    with pytest.raises(ValueError, match="frame_size"):
        A.PreparedSource(out, other)


def test_checker_names_the_missing_clip(data):
    root, _, _, stored, _, _ = data
    report = C.check_dataset(str(root), TASKS, ("train",), read_records=read_crab_plus_records,
                             min_fbank_frames=stored.min_fbank_frames)
    assert report.counts["ave"]["train"] == 2 and report.num_problems == 1
    ((path, _),) = report.problems["missing"]
    assert path.endswith(MISSING)
