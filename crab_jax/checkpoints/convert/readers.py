"""Lazy readers of the checkpoint formats users have (and of JSON options).

Readers return a read-only mapping ``key -> numpy array`` that reads ONE tensor per access
and keeps nothing, so a converter holds at most the tensor it is working on plus its output:

* ``.safetensors`` — the header is parsed once; each tensor is read with ``pread`` into a
  fresh buffer (no memory map, so the source never counts towards the resident set);
* torch ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` — ``torch.load(mmap=True,
  weights_only=True)``; after a tensor is copied out its mapped pages are handed back to the
  kernel (``madvise(MADV_DONTNEED)``), for the same reason. A BEATs-style
  ``{'cfg': ..., 'model': state_dict}`` file is recognised: the tensors are ``model`` and
  ``extra['cfg']`` holds the config; so is SAM 2's ``{'model': state_dict}``;
* a Hugging Face directory — ``config.json`` plus ``model.safetensors`` /
  ``pytorch_model.bin`` or the sharded form with ``model.safetensors.index.json`` /
  ``pytorch_model.bin.index.json`` (each key is read from the shard the index names).

Every mapping also answers ``shape(key)`` and ``dtype(key)`` without reading data.
torch is an optional dependency (the ``convert`` extra): it is imported only by the
functions that read torch files.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
from collections.abc import Mapping
from typing import Iterator

import ml_dtypes
import numpy as np

SUPPORTED_FORMATS = (
    ".safetensors file",
    "torch .bin / .pt / .pth / .ckpt file (a state dict, or a BEATs {'cfg', 'model'} dict)",
    "Hugging Face directory (config.json + model.safetensors | pytorch_model.bin | "
    "model.safetensors.index.json | pytorch_model.bin.index.json)",
    "crab_jax Orbax checkpoint directory (params/ + the model family's config JSON)",
)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# safetensors dtype name -> numpy dtype (the writers use the inverse).
SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "U16": np.dtype(np.uint16), "U32": np.dtype(np.uint32), "U64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}


class UnsupportedFormatError(ValueError):
    """A path is not in any format the converter reads; the message lists those formats."""


def unsupported(path: str, why: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(f"{path}: {why}. Supported formats:\n  - " + "\n  - ".join(SUPPORTED_FORMATS))


class TensorFile(Mapping):
    """Base: a lazily read collection of named tensors."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.extra: dict = {}

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> np.dtype:
        raise NotImplementedError

    def _missing(self, key):
        return KeyError(f"{self.path}: no tensor {key!r}")

    def source_file(self, key: str) -> str:
        """The file that holds ``key`` (named in conversion errors)."""
        return self.path

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {len(self)} tensors)"


def source_file(tensors: Mapping, key: str) -> str | None:
    """The file holding ``key`` of ``tensors`` when it can tell (a :class:`TensorFile` or a view over
    several with ``source_file``), else None."""
    where = getattr(tensors, "source_file", None)
    if where is None:
        return None
    try:
        return where(key)
    except KeyError:
        return None


# -- safetensors ---------------------------------------------------------------------------

def read_safetensors_header(path: str) -> tuple[dict, dict, int]:
    """``(tensors, metadata, data_start)``; ``tensors[key] = {'dtype', 'shape', 'data_offsets'}``."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 2**20:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
    except Exception as e:  # truncated, or not a safetensors file at all
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + n


class SafetensorsFile(TensorFile):
    def __init__(self, path: str):
        super().__init__(path)
        self._header, self.metadata, self._start = read_safetensors_header(self.path)
        for key, info in self._header.items():
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{self.path}: tensor {key!r} has dtype {info['dtype']!r}, "
                                 f"supported: {sorted(SAFETENSORS_DTYPES)}")
        self._fd = None

    def shape(self, key):
        if key not in self._header:
            raise self._missing(key)
        return tuple(self._header[key]["shape"])

    def dtype(self, key):
        if key not in self._header:
            raise self._missing(key)
        return SAFETENSORS_DTYPES[self._header[key]["dtype"]]

    def __getitem__(self, key):
        if key not in self._header:
            raise self._missing(key)
        info = self._header[key]
        begin, end = info["data_offsets"]
        out = np.empty(end - begin, np.uint8)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        view, pos = memoryview(out), 0
        while pos < len(out):  # pread may return short reads on large tensors
            n = os.preadv(self._fd, [view[pos:]], self._start + begin + pos)
            if n <= 0:
                raise ValueError(f"{self.path}: file ends inside tensor {key!r}")
            pos += n
        return out.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self):
        return len(self._header)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


# -- torch ----------------------------------------------------------------------------------

def torch_to_numpy(t) -> np.ndarray:
    import torch  # optional dependency (the convert extra): only torch files need it

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4


def _release_pages(t) -> None:
    """Hands a memory-mapped tensor's pages back to the kernel (re-read from disk if touched)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        start = t.data_ptr() // _PAGE * _PAGE
        end = t.data_ptr() + t.untyped_storage().nbytes()
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)
    except Exception:  # an optimisation only: never fail a conversion over it
        pass


class TorchFile(TensorFile):
    """``torch.save`` dict of tensors (``.bin`` / ``.pt``), memory-mapped, weights only.

    ``subkey`` selects a nested state dict (``'model'`` in a BEATs checkpoint); without it a
    ``{'cfg': dict, 'model': dict}`` file is recognised as a BEATs checkpoint.
    """

    def __init__(self, path: str, subkey: str | None = None):
        super().__init__(path)
        import torch  # optional dependency (the convert extra): only torch files need it

        try:
            obj = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise ValueError(f"{self.path}: not a readable torch checkpoint ({e})") from e
        if (subkey is None and isinstance(obj, dict) and isinstance(obj.get("model"), dict)
                and ({"cfg", "model"} <= set(obj) or set(obj) == {"model"})):
            subkey = "model"  # BEATs' {'cfg', 'model'}, SAM 2's {'model'}
        if subkey is not None:
            if not isinstance(obj, dict) or subkey not in obj:
                raise ValueError(f"{self.path}: expected a dict with key {subkey!r}, found "
                                 f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
            self.extra = {k: v for k, v in obj.items() if k != subkey}
            obj = obj[subkey]
        if not isinstance(obj, dict):
            raise ValueError(f"{self.path}: expected a state dict, found {type(obj).__name__}")
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{self.path}: entries that are not tensors: {bad[:10]}")
        self._sd = obj

    def shape(self, key):
        if key not in self._sd:
            raise self._missing(key)
        return tuple(self._sd[key].shape)

    def dtype(self, key):
        if key not in self._sd:
            raise self._missing(key)
        return torch_to_numpy(self._sd[key].reshape(-1)[:0]).dtype

    def __getitem__(self, key):
        if key not in self._sd:
            raise self._missing(key)
        t = self._sd[key]
        out = np.array(torch_to_numpy(t.contiguous()), copy=True)
        _release_pages(t)
        return out

    def __iter__(self):
        return iter(self._sd)

    def __len__(self):
        return len(self._sd)


# -- Hugging Face directories ------------------------------------------------------------------

class ShardedTensors(TensorFile):
    """Several tensor files behind one mapping (an HF ``*.index.json`` ``weight_map``)."""

    def __init__(self, path: str, weight_map: Mapping[str, str]):
        super().__init__(path)
        self._map = dict(weight_map)
        self._files: dict[str, TensorFile] = {}
        folder = os.path.dirname(self.path)
        missing = sorted({f for f in self._map.values() if not os.path.isfile(os.path.join(folder, f))})
        if missing:
            raise FileNotFoundError(f"{self.path}: shard file(s) {missing} listed in the index are not in {folder}")

    def _file(self, key) -> TensorFile:
        if key not in self._map:
            raise self._missing(key)
        name = self._map[key]
        if name not in self._files:
            self._files[name] = open_tensors(os.path.join(os.path.dirname(self.path), name))
        f = self._files[name]
        if key not in f:
            raise KeyError(f"{self.path}: the index puts {key!r} in {name}, which does not hold it")
        return f

    def shape(self, key):
        return self._file(key).shape(key)

    def source_file(self, key):
        """The shard the index puts ``key`` in."""
        if key not in self._map:
            raise self._missing(key)
        return os.path.join(os.path.dirname(self.path), self._map[key])

    def dtype(self, key):
        return self._file(key).dtype(key)

    def __getitem__(self, key):
        return self._file(key)[key]

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)


def open_hf_dir(path: str) -> tuple[dict, TensorFile]:
    """``(config.json as a dict, lazy tensors)`` of a Hugging Face model directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise unsupported(path, "expected a Hugging Face model directory")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise unsupported(path, "no config.json in this directory")
    with open(cfg_path) as f:
        config = json.load(f)
    for index in HF_INDEX_FILES:
        p = os.path.join(path, index)
        if os.path.isfile(p):
            with open(p) as f:
                data = json.load(f)
            if "weight_map" not in data:
                raise ValueError(f"{p}: an HF index must have a 'weight_map'")
            return config, ShardedTensors(p, data["weight_map"])
    for name in HF_WEIGHT_FILES:
        p = os.path.join(path, name)
        if os.path.isfile(p):
            return config, open_tensors(p)
    raise unsupported(path, f"config.json is here but none of {HF_WEIGHT_FILES + HF_INDEX_FILES}")


def open_tensors(path: str, subkey: str | None = None) -> TensorFile:
    """Opens a tensor file by its extension, or an HF directory (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if os.path.isdir(path):
        return open_hf_dir(path)[1]
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    if path.endswith(TORCH_SUFFIXES):
        return TorchFile(path, subkey)
    if path.endswith(".json") and os.path.basename(path) in HF_INDEX_FILES:
        return open_hf_dir(os.path.dirname(path) or ".")[1]
    raise unsupported(path, "unknown checkpoint format")


# -- views and options -------------------------------------------------------------------------

class KeySubset(Mapping):
    """A lazy view of ``keys`` of a tensor mapping (tensors are still read one at a time)."""

    def __init__(self, state: Mapping, keys):
        self._state, self._keys = state, list(keys)
        self._key_set = set(self._keys)
        if hasattr(state, "shape"):  # keep the readers' shape(k) / dtype(k) look-ups
            self.shape = state.shape
        if hasattr(state, "dtype"):
            self.dtype = state.dtype

    def __getitem__(self, key):
        if key not in self._key_set:
            raise KeyError(key)
        return self._state[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def read_json_arg(value: str | None) -> dict | None:
    """A JSON object given inline or as a file path (a directory means its config.json)."""
    if value is None:
        return None
    if value.lstrip().startswith("{"):
        return json.loads(value)
    path = os.path.join(value, "config.json") if os.path.isdir(value) else value
    with open(path) as f:
        return json.load(f)
