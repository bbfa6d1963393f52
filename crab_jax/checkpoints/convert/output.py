"""What every conversion into a crab_jax checkpoint ends with, whatever the model family:
the output dtype (``--dtype``), the printed summary, and the atomic write of
``<out>/params`` (:mod:`crab_jax.checkpoints.convert.orbax_io`) + ``<out>/<config file>``
(+ ``<out>/tokenizer/``, a copy of the tokenizer folder the weights go with, when given).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import ml_dtypes
import numpy as np

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.atomic import atomic_dir

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
          "fp16": "float16", "float16": "float16"}
DTYPE_CHOICES = ("bf16", "fp32", "fp16")  # the spellings ``--dtype`` offers
TOKENIZER_DIR = "tokenizer"  # <out>/tokenizer/: the tokenizer stored with the weights (to-jax --tokenizer)


@dataclasses.dataclass
class Converted:
    """A converted checkpoint in memory, ready to be written.

    flat: crab_jax path -> numpy array (canonical layout: one entry per layer, vocabulary unpadded).
    config_json: the family's model-config JSON (written as its converter's ``config_file``).
    components: the model components it holds (printed).
    notes: what was generated or overridden (printed).
    ignored: ``source:key`` -> why that source key was not loaded (printed).
    """

    flat: dict[str, np.ndarray]
    config_json: dict
    components: list[str]
    notes: list[str]
    ignored: dict[str, str]


def output_dtype(name: str | None) -> np.dtype | None:
    """``--dtype`` -> a numpy dtype (None: keep each array's dtype)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: expected one of {sorted(DTYPES)}")
    return np.dtype(ml_dtypes.bfloat16) if DTYPES[name] == "bfloat16" else np.dtype(DTYPES[name])


def summary(converted: Converted) -> str:
    n = sum(int(np.prod(v.shape)) for v in converted.flat.values())
    nbytes = sum(v.nbytes for v in converted.flat.values())
    dtypes = sorted({str(v.dtype) for v in converted.flat.values()})
    lines = [f"components: {', '.join(converted.components)}",
             f"{len(converted.flat)} arrays, {n:,} values, {nbytes / 2**20:.1f} MiB, dtypes {dtypes}"]
    lines += [f"note: {m}" for m in converted.notes]
    lines += [f"ignored: {k} ({why})" for k, why in converted.ignored.items()]
    return "\n".join(lines)


def check_tokenizer_dir(path: str | os.PathLike) -> str:
    """A tokenizer folder to store with the weights: it must be a folder holding files."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--tokenizer {path}: not a folder (expected a Hugging Face tokenizer folder)")
    if not os.listdir(path):
        raise FileNotFoundError(f"--tokenizer {path}: empty folder (expected a Hugging Face tokenizer folder)")
    return path


def write_checkpoint(out: str, converted: Converted, config_file: str, *, overwrite: bool = False,
                     tokenizer_dir: str | os.PathLike | None = None) -> None:
    """``<out>/params`` + ``<out>/<config_file>`` (+ ``<out>/tokenizer/``, a copy of
    ``tokenizer_dir``), atomically: all of them appear, or none."""
    tokenizer_dir = check_tokenizer_dir(tokenizer_dir) if tokenizer_dir else None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        orbax_io.save_params(tmp, converted.flat)
        with open(os.path.join(tmp, config_file), "w") as f:
            json.dump(converted.config_json, f, indent=2)
            f.write("\n")
        if tokenizer_dir:
            shutil.copytree(tokenizer_dir, os.path.join(tmp, TOKENIZER_DIR))
