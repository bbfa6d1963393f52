"""Conversion errors name the source file that held each bad key (the shard of an HF index)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from crab_jax.checkpoints.convert.mapping import MappingError, MappingTable, linear_rules
from crab_jax.checkpoints.convert.readers import open_hf_dir
from crab_jax.checkpoints.convert.writers import write_hf_dir


def test_bad_keys_name_the_shard_that_holds_them(tmp_path):
    state = {"proj.weight": np.ones((3, 2), np.float32), "proj.bias": np.ones((4,), np.float32),
             "stray.weight": np.ones((5,), np.float32)}
    out = str(tmp_path / "hf")
    write_hf_dir(out, {"model_type": "x"}, state, max_shard_bytes=16)  # one tensor per shard
    _, tensors = open_hf_dir(out)
    shard_of = {k: tensors.source_file(k) for k in state}
    assert len(set(shard_of.values())) == 3 and all(os.path.isfile(f) for f in shard_of.values())
    table = MappingTable("toy", linear_rules("proj"))
    expected = {"proj.weight": ((2, 3), np.float32), "proj.bias": ((3,), np.float32)}
    with pytest.raises(MappingError) as e:
        table.to_jax(tensors, expected, source=out)
    lines = str(e.value).splitlines()
    stray = [line for line in lines if "'stray.weight'" in line]
    bias = [line for line in lines if "'proj.bias'" in line]
    assert len(stray) == 1 and f"(in {shard_of['stray.weight']})" in stray[0]
    assert len(bias) == 1 and f"(in {shard_of['proj.bias']})" in bias[0] and "shape mismatch" in bias[0]


def test_a_plain_dict_still_converts_and_fails_without_file_names():
    table = MappingTable("toy", linear_rules("proj"))
    with pytest.raises(MappingError, match=r"unexpected key 'x' \(no row"):
        table.to_jax({"x": np.ones(2)})
