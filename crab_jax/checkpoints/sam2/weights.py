"""SAM 2.1 image-predictor weights from any of the three places they come in, strictly.

Sources (:func:`read_sam2`, by what ``path`` is):

* a converted crab_jax folder: ``params/`` (Orbax, crab_jax paths = HF ``Sam2Model`` names)
  + :data:`CONFIG_FILE` (:func:`read_config_file`);
* an HF ``Sam2Model`` directory: ``config.json`` (:meth:`Sam2Config.from_hf`) + safetensors
  (or ``pytorch_model.bin``, sharded or not); keys of HF's video model, which ``Sam2Model``
  itself ignores (:data:`HF_VIDEO_ONLY`), are skipped and reported;
* the original checkpoint (``sam2.1_hiera_large.pt``: a torch file whose ``"model"`` dict
  holds the original names): renamed by ``original_to_hf``; its video-model keys
  (:data:`~crab_jax.checkpoints.sam2.original_names.VIDEO_ONLY`) are skipped and reported. No
  file says the sizes: ``cfg`` (default :func:`sam2_1_hiera_large`).

Strict: every variable of :class:`Sam2ImageModel` must be there with its shape and nothing
else may be; a failure is a :class:`MappingError` naming every missing, unexpected and
mis-shaped key (in the source's own names) with the shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Mapping

import numpy as np

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.readers import TORCH_SUFFIXES, TorchFile, open_hf_dir, unsupported
from crab_jax.checkpoints.convert.tables.sam2 import original_to_hf, sam2_table
from crab_jax.checkpoints.sam2.original_names import VIDEO_ONLY, original_shapes
from crab_jax.models.rngs import make_rngs
from crab_jax.models.sam2.config import Sam2Config, sam2_1_hiera_large
from crab_jax.models.sam2.model import Sam2ImageModel
from crab_jax.models.state_dict import abstract_module, expected_shapes, load_flat

CONFIG_FILE = "sam2_config.json"  # next to params/ in a converted folder
# HF Sam2Model._keys_to_ignore_on_load_unexpected: the video model's keys in a shared HF checkpoint.
HF_VIDEO_ONLY = re.compile(r"^(memory_|mask_downsample|object_pointer_proj|temporal_positional_encoding_projection_layer)"
                           r"|^(no_memory_positional_encoding|no_object_pointer|occlusion_spatial_embedding_parameter)$")
ORIGINAL_SUBKEY = "model"  # sam2.1_hiera_large.pt = {"model": state dict}


@dataclasses.dataclass
class Sam2Weights:
    """A SAM 2.1 image predictor's weights in memory.

    cfg: the model's sizes. flat: crab_jax path -> numpy array (every variable of the model).
    hf_config: the HF ``config.json`` the weights came with (kept for the HF export), or None.
    source: what they were read from (``'original'``, ``'hf'``, ``'converted'``) and path.
    ignored: source key -> why it was not loaded (the video model's keys).
    """

    cfg: Sam2Config
    flat: dict[str, np.ndarray]
    hf_config: dict | None
    source: str
    ignored: dict[str, str]


@functools.lru_cache(maxsize=8)
def model_shapes(cfg: Sam2Config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """crab_jax path -> (shape, dtype) of every variable of ``Sam2ImageModel(cfg)`` (nothing allocated;
    cached: do not modify the result)."""
    return expected_shapes(abstract_module(lambda: Sam2ImageModel(cfg, rngs=make_rngs(0))))


def hf_shapes(cfg: Sam2Config) -> dict[str, tuple[int, ...]]:
    """HF key -> torch shape of the model's weights (the tied positional matrix under its first name)."""
    table, out = sam2_table(cfg), {}
    for jkey, (shape, _) in model_shapes(cfg).items():
        rule = table.rule_for_jax(jkey)
        torch_shape = rule.transform.to_torch(np.empty(shape, np.uint8)).shape
        out[table.jax_key_to_torch(jkey, shape)[0][0]] = tuple(torch_shape)
    return out


def strict_problems(found: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]]) -> list[str]:
    """One line per missing, unexpected or mis-shaped key (key -> shape in both)."""
    problems = [f"missing {k!r} (expected shape {tuple(s)})" for k, s in want.items() if k not in found]
    problems += [f"unexpected {k!r} {tuple(s)}: the SAM 2.1 image model has no such weight"
                 for k, s in found.items() if k not in want]
    problems += [f"{k!r}: expected shape {tuple(want[k])}, found {tuple(s)}"
                 for k, s in found.items() if k in want and tuple(s) != tuple(want[k])]
    return problems


def _fail(source: str, problems: list[str]) -> None:
    if problems:
        raise MappingError(f"{source}: {len(problems)} problem(s) loading SAM 2.1:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------------- configs

def config_json(cfg: Sam2Config, hf_config: dict | None) -> dict:
    """The :data:`CONFIG_FILE` of a converted folder: the sizes (HF ``Sam2Config`` fields) and the
    HF ``config.json`` the weights came with (None for the original's ``.pt``)."""
    return {"sam2_config": cfg.to_hf(), "hf_config": hf_config}


def read_config_file(folder: str) -> tuple[Sam2Config, dict | None]:
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} (a converted SAM2 folder holds params/ + {CONFIG_FILE})")
    with open(path) as f:
        data = json.load(f)
    if "sam2_config" not in data:
        raise ValueError(f"{path}: expected a 'sam2_config' object (HF Sam2Config fields)")
    return Sam2Config.from_hf(data["sam2_config"]), data.get("hf_config")


def config_from_json(data: Mapping) -> Sam2Config:
    """An HF ``config.json`` dict or a :data:`CONFIG_FILE` dict -> :class:`Sam2Config`."""
    return Sam2Config.from_hf(data["sam2_config"] if "sam2_config" in data else data)


# ----------------------------------------------------------------------------------- sources

def source_kind(path: str) -> str:
    """``'converted'``, ``'hf'`` or ``'original'`` (raises naming the formats read)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such SAM2 checkpoint file or folder")
    if os.path.isdir(path):
        if orbax_io.is_checkpoint(path):
            return "converted"
        if os.path.isfile(os.path.join(path, "config.json")):
            return "hf"
        raise unsupported(path, f"a folder without params/ + {CONFIG_FILE} or config.json")
    if path.endswith(TORCH_SUFFIXES):
        return "original"
    raise unsupported(path, "expected the original sam2.1_*.pt, an HF Sam2Model folder or a converted folder")


def read_original(path: str, cfg: Sam2Config | None = None) -> Sam2Weights:
    """The original's ``.pt`` (``{"model": state dict}``, or a bare state dict) for ``cfg`` (default Hiera-L)."""
    cfg = cfg or sam2_1_hiera_large()
    try:
        tensors = TorchFile(path, ORIGINAL_SUBKEY)
    except ValueError:  # a bare state dict (no "model" entry)
        tensors = TorchFile(path)
    video = [k for k in tensors if VIDEO_ONLY.search(k)]
    kept = [k for k in tensors if not VIDEO_ONLY.search(k)]
    want = original_shapes(hf_shapes(cfg))
    _fail(path, strict_problems({k: tensors.shape(k) for k in kept}, want))
    hf, dropped = original_to_hf({k: tensors[k] for k in kept})
    _fail(path, [f"unexpected {k!r}: original_to_hf has no name for it" for k in dropped])
    flat = sam2_table(cfg).to_jax(hf, model_shapes(cfg), source=path)
    return Sam2Weights(cfg, flat, None, f"original {path}", {f"{path}:{k}": "video model only" for k in video})


def read_hf(path: str) -> Sam2Weights:
    """An HF ``Sam2Model`` directory (its ``config.json`` gives the sizes)."""
    config, tensors = open_hf_dir(path)
    cfg = Sam2Config.from_hf(config)
    video = [k for k in tensors if HF_VIDEO_ONLY.search(k)]
    kept = {k: tensors[k] for k in tensors if not HF_VIDEO_ONLY.search(k)}
    flat = sam2_table(cfg).to_jax(kept, model_shapes(cfg), source=path)
    return Sam2Weights(cfg, flat, config, f"hf {path}", {f"{path}:{k}": "video model only" for k in video})


def read_converted(path: str) -> Sam2Weights:
    """A converted folder (``params/`` + :data:`CONFIG_FILE`)."""
    cfg, hf_config = read_config_file(path)
    want = {k: s for k, (s, _) in model_shapes(cfg).items()}
    _fail(path, strict_problems({k: s for k, (s, _) in orbax_io.params_metadata(path).items()}, want))
    return Sam2Weights(cfg, orbax_io.restore_flat(path), hf_config, f"converted {path}", {})


def read_sam2(path: str, cfg: Sam2Config | None = None) -> Sam2Weights:
    """Any of the three sources (see the module docstring); ``cfg`` only for the original's ``.pt``."""
    kind = source_kind(path)
    if cfg is not None and kind != "original":
        raise ValueError(f"{path}: a SAM2 config is only given for the original's .pt (this {kind} source "
                         "carries its own)")
    return {"original": lambda: read_original(path, cfg), "hf": lambda: read_hf(path),
            "converted": lambda: read_converted(path)}[kind]()


def build_model(weights: Sam2Weights) -> Sam2ImageModel:
    """``Sam2ImageModel(weights.cfg)`` holding ``weights.flat`` (float32 variables)."""
    model = abstract_module(lambda: Sam2ImageModel(weights.cfg, rngs=make_rngs(0)))
    load_flat(model, weights.flat, source=weights.source)
    return model


def load_sam2_model(path: str, cfg: Sam2Config | None = None) -> tuple[Sam2Config, Sam2ImageModel]:
    """``(cfg, model)`` from any SAM2 source (:func:`read_sam2`)."""
    weights = read_sam2(path, cfg)
    return weights.cfg, build_model(weights)
