"""Bad records: each logged once with its path and reason at indexing and decoding (rate-limited),
counted per reason and per task (stats, metrics, the end-of-run summary), and the
``data.max_bad_fraction`` rule: judged against the whole plan index, while decoding only once the
count or the statistics say so (a dataset under the limit never stops early, one half bad soon)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from etils import epath

from crab_jax.data.pipeline.bad_records import MAX_LOGGED, MIN_SEEN, BadRecordLimit, summary_lines
from crab_jax.data.pipeline.iterator import TooManyBadRecordsError
from crab_jax.training.hooks import data_stats_metrics
from tests.data.pipeline.crab_data import clean_data, dirty_data, iterator

clean = pytest.fixture(scope="module", name="clean")(clean_data)
dirty = pytest.fixture(scope="module", name="dirty")(dirty_data)
BATCH = 8


def _stream(limit: BadRecordLimit, outcomes, index_bad: int = 0) -> int | None:
    """Feeds decoded records (True: bad) in batches of BATCH, one first pass, each record distinct;
    the number seen when the rule stops (None: never)."""
    seen = bad = 0
    for start in range(0, len(outcomes), BATCH):
        chunk = outcomes[start:start + BATCH]
        seen, bad = seen + len(chunk), bad + int(np.sum(chunk))
        if limit.check(index_bad, bad, seen, bad, first_epoch=True):
            return seen
    return None


def test_the_index_is_judged_as_a_whole_at_start():
    limit = BadRecordLimit(0.01, total=1000, usable=989, shuffled=True)
    assert "11 of 1000 records bad during plan index" in limit.check(11)
    assert limit.check(10) is None


def test_a_dataset_under_the_limit_never_stops_even_with_its_bad_records_first():
    # 0.8 % bad against a 1 % limit, every bad record decoded first (an unshuffled plan)
    outcomes = np.arange(1000) < 8
    assert _stream(BadRecordLimit(0.01, total=1000, usable=1000, shuffled=False), outcomes) is None
    # shuffled: a random 0.8 % over the first 200k records of a million never crosses the bound
    rng = np.random.default_rng(0)
    outcomes = rng.random(200_000) < 0.008
    assert _stream(BadRecordLimit(0.01, total=10**6, usable=10**6, shuffled=True), outcomes) is None


def test_a_dataset_half_bad_stops_within_the_first_few_hundred_records():
    rng = np.random.default_rng(1)
    outcomes = rng.random(10**5) < 0.5
    stop = _stream(BadRecordLimit(0.01, total=10**6, usable=10**6, shuffled=True), outcomes)
    assert stop is not None and MIN_SEEN <= stop <= 2 * MIN_SEEN
    # unshuffled: only the count may stop it, once more than 1 % of all records failed
    stop = _stream(BadRecordLimit(0.01, total=1000, usable=1000, shuffled=False), outcomes[:1000])
    assert stop is not None and stop <= 40


def _with_bad(clean, bad_first: int, copies: int):
    """The clean records ``copies`` times, after ``bad_first`` S4 records whose mask is missing
    (found only while decoding)."""
    root, records, errors, tok, cfg, settings = clean
    s4 = next(r for r in records if r.task == "s4")
    bad = [dataclasses.replace(s4, mask_path=f"avs/v1s/missing{i}/labels_semantic/0.png") for i in range(bad_first)]
    return (root, bad + list(records) * copies, errors, tok, cfg, settings)


def test_the_pipeline_does_not_stop_a_dataset_under_the_limit_whose_bad_records_come_first(clean):
    data = _with_bad(clean, 2, 2)  # 2 bad of 50 records (4 %) against 5 %, decoded first
    it = iterator(data, num_epochs=1, shuffle=False, max_bad_fraction=0.05)
    for _ in it:
        pass
    st = it.stats()
    assert st["bad"] == 2 and st["seen"] == len(data[1]) and st["bad_by_reason"] == {"missing_file": 2}


def test_the_pipeline_stops_a_dataset_half_bad_early(clean):
    data = _with_bad(clean, 24, 1)  # 24 bad of 48
    it = iterator(data, num_epochs=1, max_bad_fraction=0.01)
    with pytest.raises(TooManyBadRecordsError, match="failed to decode") as e:
        for _ in it:
            pass
    assert "labels_semantic/0.png" in str(e.value) and it.stats()["seen"] <= 16


def test_bad_records_are_logged_once_with_path_and_reason_and_summarised(dirty, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="crab_jax"):
        it = iterator(dirty, num_epochs=2)
        for _ in it:
            pass
    lines = [r.getMessage() for r in caplog.records]
    indexing = [x for x in lines if x.startswith("bad record at indexing")]
    decoding = [x for x in lines if x.startswith("bad record at decoding")]
    assert any("ave/valid_train_samples.json#" in x and "missing field 'event'" in x for x in indexing)
    assert any("ave-train-00001.mp3" in x for x in indexing) and len(indexing) == 2
    assert len(decoding) == 1 and "labels_semantic/0.png" in decoding[0] and "[task s4]" in decoding[0]
    st = it.stats()
    assert st["bad"] == 2 and st["bad_records"] == 1  # counted every epoch, logged and counted as a record once
    assert st["bad_by_task"] == {"ave": 2, "s4": 2}
    metrics = data_stats_metrics(it)
    assert metrics["data/bad_by_task/ave"] == 2 and metrics["data/bad_by_reason/annotation"] == 1
    assert metrics["data/index_bad"] == 2 and metrics["data/bad_records"] == 1
    text = "\n".join(summary_lines(st))
    assert "bad records by task: ave 2, s4 2" in text and "annotation 1" in text

    from crab_jax.train import summary_lines as run_summary
    from crab_jax.training.loop import RunResult

    result = RunResult([], [], epath.Path(tmp_path), None, None, {}, st)
    assert "bad records by task: ave 2, s4 2" in "\n".join(run_summary(result, 1.0))


def test_logging_is_rate_limited_with_a_count_of_the_rest(dirty, caplog):
    root, records, errors, tok, cfg, settings, _ = dirty
    empty_audio = next(r for r in records if "ave-train-00001" in str(r.audios))
    many = records + [empty_audio] * 30  # 31 bad at the plan index + the reader's one
    with caplog.at_level(logging.WARNING, logger="crab_jax"):
        it = iterator((root, many, errors, tok, cfg, settings), max_bad_fraction=1.0)
    lines = [r.getMessage() for r in caplog.records]
    assert sum(x.startswith("bad record at indexing") for x in lines) == MAX_LOGGED
    assert sum("more bad records at indexing are counted" in x for x in lines) == 1
    st = it.stats()
    assert st["index_bad"] == 32 and st["bad_not_logged"] == 32 - MAX_LOGGED
    assert f"{32 - MAX_LOGGED} bad record(s) counted but not listed" in "\n".join(summary_lines(st))
