"""Prepared ArrayRecord shards (TFDS, TF-free): same examples and batches as decoding on the fly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from crab_jax.data.pipeline import grain as G
from crab_jax.data.pipeline.record_source import RawRecordSource
from crab_jax.data.prepared import array_record as A
from crab_jax.cli import prepare as prepare_cli
from crab_jax.data.prepared import prepare as PR
from crab_jax.families.crab import examples as E
from tests.data.pipeline.crab_data import BUCKETS, FALLBACK_FBANK_FRAMES, builder_of, make_dataset, setup_for


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("raw"), num_train=3)
    (root / "ave" / "audio_data" / "ave-train-00002.mp3").write_bytes(b"")  # one bad record
    records, errors, tok, cfg, settings = setup_for(root)
    out = tmp_path_factory.mktemp("prepared")
    result = PR.prepare(records, builder_of(tok, cfg, settings), out, progress=False)
    return root, records, tok, cfg, settings, out, result


def test_prepared_examples_equal_decoding_on_the_fly(prepared):
    root, records, tok, cfg, settings, out, result = prepared
    assert result["written"] == len(records) - 1
    assert len(result["bad"]) == 1 and "ave-train-00002.mp3" in result["bad"][0][0]
    meta = json.loads((out / A.META_FILE).read_text())
    assert meta["bad_records"][0]["reason"]
    src = A.PreparedSource(out, builder_of(None, cfg, settings))
    by_source = {r.source: (i, r) for i, r in enumerate(records)}
    for k in range(len(src)):
        got = src.example(k)
        i, rec = by_source[src.sources[k]]
        want = E.build_example(rec, tok, settings)
        assert got.source == want.source and got.visual == want.visual and got.is_seg == want.is_seg
        for f in ("input_ids", "labels", "frames", "fbank", "gt_mask"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), f
        assert src.plan_info(k) == E.plan_info(rec, tok, settings)


def test_pipeline_over_prepared_data_matches_raw(prepared):
    root, records, tok, cfg, settings, out, _ = prepared
    src = A.PreparedSource(out, builder_of(None, cfg, settings))
    good = [records[[r.source for r in records].index(s)] for s in src.sources]
    kw = dict(global_batch=4, seq_buckets=BUCKETS, seed=5, max_bad_fraction=1.0,
              fallback_fbank_frames=FALLBACK_FBANK_FRAMES)
    a = G.make_iterator(src, **kw)
    b = G.make_iterator(RawRecordSource(good, builder_of(tok, cfg, settings)), **kw)
    for _ in range(a.batches_per_epoch):
        x, y = next(a), next(b)
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_prepared_data_refuses_other_settings(prepared):
    *_, cfg, settings, out, _ = prepared
    other = dataclasses.replace(settings, image_size=settings.image_size * 2)
    with pytest.raises(ValueError, match="image_size"):
        A.PreparedSource(out, builder_of(None, cfg, other))


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit):
        prepare_cli.main(["--help"])
    text = capsys.readouterr().out
    assert "--config" in text and "ArrayRecord" in text and "data.prepared" in text
