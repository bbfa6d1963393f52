"""Streaming, atomic writers of the files the PyTorch world loads.

* :func:`write_safetensors` / :func:`write_hf_shards`: one safetensors file, or HF-style
  shards + ``model.safetensors.index.json``, streamed from ``(key, shape, dtype, read)``
  specs so only one tensor is in memory at a time;
* :func:`save_torch_bin`, :func:`save_safetensors`, :func:`write_hf_dir`: a state dict of
  numpy arrays as a ``torch.save`` file, a safetensors file, or an HF folder
  (``config.json`` + shards), each written atomically (:mod:`crab_jax.checkpoints.convert.atomic`).

torch is an optional dependency (the ``convert`` extra): only the ``.bin`` writer imports it.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np

from crab_jax.checkpoints.convert.atomic import atomic_dir, atomic_file
from crab_jax.checkpoints.convert.readers import SAFETENSORS_DTYPES

_SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# (key, shape, dtype, read): ``read()`` returns the tensor when the writer gets to it.
TensorSpec = tuple[str, Sequence[int], np.dtype, Callable[[], np.ndarray]]


def _safetensors_name(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype not in _SAFETENSORS_NAMES:
        raise ValueError(f"dtype {dtype} cannot be written to safetensors; "
                         f"supported: {sorted(map(str, _SAFETENSORS_NAMES))}")
    return _SAFETENSORS_NAMES[dtype]


def _nbytes(shape: Sequence[int], dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def tensor_specs(state: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """The specs of arrays already in memory."""
    return [(k, v.shape, v.dtype, (lambda v=v: v)) for k, v in state.items()]


def write_safetensors(path: str, specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None) -> None:
    """Streams tensors into one safetensors file: ``specs`` = ``(key, shape, dtype, read)``.

    The header is written from the shapes first; then each ``read()`` is called, written and
    dropped, so only one tensor is in memory at a time.
    """
    specs = list(specs)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for key, shape, dtype, _ in specs:
        n = _nbytes(shape, dtype)
        header[key] = {"dtype": _safetensors_name(dtype), "shape": [int(s) for s in shape],
                       "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data start to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for key, shape, dtype, read in specs:
            a = np.ascontiguousarray(read())
            if tuple(a.shape) != tuple(shape) or a.dtype != np.dtype(dtype):
                raise ValueError(f"{path}: tensor {key!r} is {a.shape} {a.dtype}, announced {tuple(shape)} {dtype}")
            f.write(memoryview(a.reshape(-1).view(np.uint8)))
            del a


def write_hf_shards(folder: str, specs: Sequence[TensorSpec], *, max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """HF-style ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` + index) in ``folder``."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        n = _nbytes(spec[1], spec[2])
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += n
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    total = 0
    weight_map = {}
    for name, shard in zip(names, shards):
        write_safetensors(os.path.join(folder, name), shard)
        for key, shape, dtype, _ in shard:
            weight_map[key] = name
            total += _nbytes(shape, dtype)
    if len(shards) > 1:
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


def numpy_to_torch(a: np.ndarray):
    import torch  # optional dependency (the convert extra): only torch outputs need it

    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def save_torch_bin(path: str, state: Mapping[str, np.ndarray], extra: dict | None = None, *,
                   overwrite: bool = False) -> None:
    """``torch.save`` of ``state`` (or of ``dict(extra, model=state)``, a BEATs-style file)."""
    import torch  # optional dependency (the convert extra): only torch outputs need it

    tensors = {k: numpy_to_torch(v) for k, v in state.items()}
    obj = dict(extra, model=tensors) if extra is not None else tensors
    with atomic_file(path, overwrite=overwrite) as tmp:
        torch.save(obj, tmp)


def save_safetensors(path: str, state: Mapping[str, np.ndarray], *, overwrite: bool = False) -> None:
    with atomic_file(path, overwrite=overwrite) as tmp:
        write_safetensors(tmp, tensor_specs(state))


def write_hf_dir(out: str, config: dict, state: Mapping[str, np.ndarray], *, max_shard_bytes: int,
                 overwrite: bool = False) -> None:
    """An HF model folder: ``config.json`` + safetensors shards of ``state``."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        write_hf_shards(tmp, tensor_specs(state), max_shard_bytes=max_shard_bytes)
