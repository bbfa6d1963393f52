"""The HF Qwen2.5-Omni directory, read lazily and written streaming.

A directory holds ``config.json`` (a ``Qwen2_5OmniConfig``, or a thinker config) and the
weights: ``model.safetensors``, or shards listed by ``model.safetensors.index.json`` (a
``pytorch_model.bin`` [+ index] is read too). The released checkpoint's shards also hold the
talker and token2wav: those keys are skipped by name (:func:`.thinker_table.skipped_reason`),
and so is a listed shard that is absent if it holds nothing else; every other key is kept,
so the strict check names whatever does not belong to the thinker.

Writing (``to-torch --format hf``): ``config.json`` + safetensors shards (+ the index when
there is more than one), streamed from ``(key, shape, dtype, read)`` specs so one tensor at
a time is in memory, in a temporary folder renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from typing import Mapping, Sequence

from crab_jax.checkpoints.convert.atomic import atomic_dir
from crab_jax.checkpoints.convert.readers import (HF_INDEX_FILES, KeySubset, ShardedTensors, TensorFile,
                                                  open_hf_dir, unsupported)
from crab_jax.checkpoints.convert.writers import TensorSpec, write_hf_shards
from crab_jax.families.crab_plus.convert.thinker_table import skipped_reason


@dataclasses.dataclass
class HFCheckpoint:
    """An opened HF directory.

    config: its ``config.json``.
    tensors: lazy ``key -> array`` of every key that is not skipped (``shape(k)`` / ``dtype(k)``
      read no data); keys of absent shards are not in it (see ``absent_shards``).
    skipped: ``prefix -> number of keys`` skipped by name (``talker.``, ``token2wav.``).
    absent_shards: shard file -> the kept keys the index puts in it, for shards that are listed
      but not in the folder (an error if it holds a kept key; :func:`absent_shard_problems`).
    """

    path: str
    config: dict
    tensors: TensorFile | KeySubset
    skipped: dict[str, int]
    absent_shards: dict[str, list[str]]


def _index_file(path: str) -> str | None:
    for name in HF_INDEX_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def open_hf_checkpoint(path: str) -> HFCheckpoint:
    """Opens ``path`` (an HF Qwen2.5-Omni directory) without reading any tensor."""
    path = os.fspath(path)
    index = _index_file(path) if os.path.isdir(path) else None
    if index is None:
        config, tensors = open_hf_dir(path)  # raises naming the formats it reads
        keys, absent = list(tensors.keys()), {}
        listed = keys
    else:
        config = _read_config(path)
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: an HF index must have a 'weight_map' object")
        present = {k: v for k, v in weight_map.items() if os.path.isfile(os.path.join(path, v))}
        absent = {}
        for key, shard in weight_map.items():
            if key not in present and skipped_reason(key) is None:
                absent.setdefault(shard, []).append(key)
        tensors = ShardedTensors(index, present)
        keys, listed = list(present), list(weight_map)
    skipped = Counter(k.split(".", 1)[0] + "." for k in listed if skipped_reason(k) is not None)
    kept = [k for k in keys if skipped_reason(k) is None]
    return HFCheckpoint(path, config, KeySubset(tensors, kept), dict(skipped), absent)


def _read_config(path: str) -> dict:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise unsupported(path, "no config.json in this directory")
    with open(config) as f:
        return json.load(f)


def absent_shard_problems(ckpt: HFCheckpoint, expected_shapes: Mapping[str, tuple]) -> list[str]:
    """One line per kept key in a listed-but-absent shard, with the shape the model expects."""
    out = []
    for shard, keys in ckpt.absent_shards.items():
        for key in keys:
            want = expected_shapes.get(key)
            shape = f"the model expects shape {want}" if want is not None else "no row of the table matches it"
            out.append(f"missing tensor {key!r} ({shape}): the index puts it in {shard}, which is not in {ckpt.path}")
    return out


def skipped_notes(ckpt: HFCheckpoint) -> dict[str, str]:
    """``Converted.ignored`` entries: one per skipped prefix (the 7B release has thousands of keys)."""
    return {f"{ckpt.path}:{prefix}*": f"{n} tensors, {skipped_reason(prefix)}" for prefix, n in ckpt.skipped.items()}


def write_hf_checkpoint(out: str, config: dict, specs: Sequence[TensorSpec], *, max_shard_bytes: int,
                        overwrite: bool = False) -> list[str]:
    """``out``: ``config.json`` + safetensors shards of ``specs`` (streamed), atomically; returns the shard names."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        return write_hf_shards(tmp, specs, max_shard_bytes=max_shard_bytes)
