"""The shared record plumbing: path rules, label files, the picklable error type."""

from __future__ import annotations

import pickle

import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.record import Record, load_answer, resolve


def test_paths_labels_and_errors(tmp_path):
    with pytest.raises(BadRecordError, match="relative to the data root"):
        resolve(tmp_path, "../etc/passwd")
    rec = Record(family="crab", task="ave", mode="train", split="train", source="s#0", answer_file="ave/none.txt")
    with pytest.raises(BadRecordError, match="label file not found") as e:
        load_answer(rec, tmp_path)
    assert e.value.path == "ave/none.txt"
    err = pickle.loads(pickle.dumps(BadRecordError("p", "why")))
    assert (err.path, err.reason, str(err)) == ("p", "why", "p: why")
