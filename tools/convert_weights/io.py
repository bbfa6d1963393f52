"""Lazy readers for the checkpoint formats users have (safetensors, torch .bin/.pt).

Each reader returns a read-only mapping ``key -> numpy array`` that loads one tensor per
access, so converters stream instead of holding a second copy of the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Iterator

import numpy as np


class TensorFile(Mapping):
    """Base: a lazily read file of named tensors."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {len(self)} tensors)"


class SafetensorsFile(TensorFile):
    def __init__(self, path: str):
        super().__init__(path)
        from safetensors import safe_open

        try:
            self._f = safe_open(self.path, framework="numpy")
        except Exception as e:  # truncated or not a safetensors file
            raise ValueError(f"{self.path}: not a readable safetensors file ({e})") from e
        self._keys = list(self._f.keys())

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(f"{self.path}: no tensor {key!r}")
        return self._f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class TorchFile(TensorFile):
    """``torch.save`` dict of tensors (``.bin`` / ``.pt``), memory-mapped, weights only.

    ``subkey`` selects a nested state dict, e.g. ``'model'`` in a BEATs checkpoint.
    """

    def __init__(self, path: str, subkey: str | None = None):
        super().__init__(path)
        import torch

        try:
            obj = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise ValueError(f"{self.path}: not a readable torch checkpoint ({e})") from e
        self.extra = {}
        if subkey is not None:
            if not isinstance(obj, dict) or subkey not in obj:
                raise ValueError(f"{self.path}: expected a dict with key {subkey!r}, found "
                                 f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
            self.extra = {k: v for k, v in obj.items() if k != subkey}
            obj = obj[subkey]
        if not isinstance(obj, dict):
            raise ValueError(f"{self.path}: expected a state dict, found {type(obj).__name__}")
        self._sd = obj

    def __getitem__(self, key):
        if key not in self._sd:
            raise KeyError(f"{self.path}: no tensor {key!r}")
        return torch_to_numpy(self._sd[key])

    def __iter__(self):
        return iter(self._sd)

    def __len__(self):
        return len(self._sd)


def open_tensors(path: str, subkey: str | None = None) -> TensorFile:
    """Opens ``path`` by its extension: ``.safetensors`` or torch ``.bin`` / ``.pt`` / ``.pth``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    if path.endswith((".bin", ".pt", ".pth", ".ckpt")):
        return TorchFile(path, subkey)
    raise ValueError(f"{path}: unknown checkpoint format; supported: .safetensors, .bin, .pt, .pth, .ckpt")
