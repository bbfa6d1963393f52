"""The streaming writers read back bit-exactly through the lazy readers; outputs are atomic."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from crab_jax.checkpoints.convert.readers import SafetensorsFile, open_tensors
from crab_jax.checkpoints.convert.writers import save_safetensors, tensor_specs, write_hf_dir, write_safetensors


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a.weight": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
            "a.bias": rng.standard_normal(5).astype(np.float32),
            "ids": np.arange(7, dtype=np.int64)[None]}


def _assert_same(back, state):
    assert sorted(back) == sorted(state)
    for k, v in state.items():
        assert back.shape(k) == v.shape and back.dtype(k) == v.dtype, k
        assert np.array_equal(back[k].view(np.uint8), v.view(np.uint8)), k


def test_safetensors_round_trip_and_refusals(tmp_path):
    state = _state()
    save_safetensors(str(tmp_path / "s.safetensors"), state)
    _assert_same(SafetensorsFile(str(tmp_path / "s.safetensors")), state)
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_safetensors(str(tmp_path / "s.safetensors"), state)
    with pytest.raises(ValueError, match="announced"):  # a read() that does not match its spec
        write_safetensors(str(tmp_path / "bad.safetensors"), [("x", (2,), np.float32, lambda: np.zeros(3, np.float32))])


def test_hf_dir_shards_with_an_index(tmp_path):
    state = _state()
    write_hf_dir(str(tmp_path / "hf"), {"model_type": "test"}, state, max_shard_bytes=32)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(state) and len(set(index["weight_map"].values())) > 1
    _assert_same(open_tensors(str(tmp_path / "hf")), state)
    assert [s[0] for s in tensor_specs(state)] == list(state)
    assert not list(tmp_path.glob("*.partial-*"))
