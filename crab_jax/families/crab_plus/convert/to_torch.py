"""``to-torch`` for Crab+: a converted checkpoint -> the files the original reads.

Formats (``--format``):

* ``hf``: an HF Qwen2.5-Omni directory of the base weights (``thinker.`` + module path):
  the ``config.json`` the checkpoint was converted from, ``model.safetensors`` or shards of
  ``--max-shard-gb`` + ``model.safetensors.index.json``. ``Qwen2_5OmniForConditionalGeneration.
  from_pretrained`` loads it (the talker / token2wav weights were never converted: the
  original disables the talker);
* ``adapter``: ``finetune_weights.bin``, the I-LoRA weights under ``base_model.model.`` +
  module path, exactly the keys and shapes the original's training saves (so the original's
  ``load_state_dict(..., strict=True)`` of its adapter keys finds each one).

Before anything is written every array is checked against the model of the checkpoint's
``crab_plus_config.json`` (names and shapes). Memory: only the arrays of the format are read,
in about :data:`RESTORE_BATCHES` batches in the writer's order, each batch when the writer
reaches it (:class:`LazyLeaves`); each array is converted then and dropped once written. An HF
export so holds about two batches at a time, not the model: Orbax's read keeps a second copy of
what one restore call reads, so restoring the whole checkpoint at once peaks at ~2x (measured;
the 7B vocabulary's embedding and head alone are 2 GiB in bf16). Batches, not single arrays:
each restore call costs ~0.1 s per 1,000 arrays of the checkpoint (its metadata). The adapter
file is one ``torch.save`` and holds one copy of itself.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
from typing import Iterable, Mapping

import numpy as np
import orbax.checkpoint as ocp

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.converted import PARAMS_DIR, nest
from crab_jax.checkpoints.convert.writers import TensorSpec
from crab_jax.families.crab_plus.convert import config_io
from crab_jax.families.crab_plus.convert.adapter_files import save_adapter
from crab_jax.families.crab_plus.convert.hf_files import write_hf_checkpoint
from crab_jax.families.crab_plus.convert.thinker_table import thinker_table, torch_layout
from crab_jax.families.crab_plus.convert.variables import canonical_config, expected_variables
from crab_jax.models.state_dict import flat_leaves

FORMATS = {"hf": "base", "adapter": "adapter"}  # --format -> the checkpoint part it writes


def check_arrays(arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]], config: config_io.CheckpointConfig,
                 *, source: str) -> None:
    """The arrays (name -> (shape, dtype)) must be exactly the variables of the config's model
    that its ``contents`` lists (names and shapes); raises :class:`MappingError` naming each one."""
    expected = expected_variables(config.thinker, config.contents)
    problems = [f"missing {k!r}: expected shape {s}" for k, (s, _) in expected.items() if k not in arrays]
    problems += [f"unexpected {k!r} {tuple(s)}: the config's model ({'+'.join(config.contents)}) has no such weight"
                 for k, (s, _) in arrays.items() if k not in expected]
    problems += [f"{k!r}: expected shape {expected[k][0]}, found {tuple(s)}"
                 for k, (s, _) in arrays.items() if k in expected and tuple(s) != expected[k][0]]
    if problems:
        raise MappingError(f"{source}: does not match its {config_io.CONFIG_FILE} ({len(problems)} problem(s)):\n  "
                           + "\n  ".join(problems))


def restore_subset(folder: str, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Only ``names`` of ``folder/params`` (host numpy arrays, saved dtypes): the other arrays are not read."""
    names = list(names)
    if not names:
        return {}
    restore_args = nest({k: ocp.RestoreArgs(restore_type=np.ndarray) for k in names})
    tree = ocp.PyTreeCheckpointer().restore(
        os.path.join(os.path.abspath(folder), PARAMS_DIR),
        args=ocp.args.PyTreeRestore(item=nest({k: 0 for k in names}), restore_args=restore_args, partial_restore=True))
    return flat_leaves(tree)


RESTORE_BATCHES = 32  # restore calls per export (+ one per array bigger than a batch)
MIN_RESTORE_BATCH_BYTES = 64 * 2**20


class LazyLeaves:
    """``folder/params`` arrays restored in batches on first use, in the order they are wanted.

    ``shapes``: crab_jax path -> (shape, dtype) of the arrays to read, in the order the writer
    asks for them; consecutive ones are grouped into batches of at most ``batch_bytes`` (default:
    1 / :data:`RESTORE_BATCHES` of the total, at least :data:`MIN_RESTORE_BATCH_BYTES`; an array
    bigger than that is a batch of its own). :meth:`pop` restores the batch of a name
    not read yet and hands each array out once, so only the unwritten rest of one batch stays.
    """

    def __init__(self, folder: str, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                 batch_bytes: int | None = None):
        sizes = {name: int(np.prod(shape)) * np.dtype(dtype).itemsize for name, (shape, dtype) in shapes.items()}
        if batch_bytes is None:
            batch_bytes = max(MIN_RESTORE_BATCH_BYTES, sum(sizes.values()) // RESTORE_BATCHES)
        self.folder = folder
        self.batch_of: dict[str, int] = {}
        self.batches: list[list[str]] = []
        size = 0
        for name, n in sizes.items():
            if not self.batches or size + n > batch_bytes:
                self.batches.append([])
                size = 0
            self.batches[-1].append(name)
            self.batch_of[name] = len(self.batches) - 1
            size += n
        self.loaded: dict[str, np.ndarray] = {}

    def pop(self, name: str) -> np.ndarray:
        if name not in self.loaded:
            return_freed_memory()
            self.loaded.update(restore_subset(self.folder, self.batches[self.batch_of[name]]))
        return self.loaded.pop(name)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


def return_freed_memory() -> None:
    """Hands the memory freed since the last batch back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). Orbax's reader threads allocate restored arrays in their own malloc arenas, whose
    freed pages the converting thread does not reuse: without this the adapter export's RSS grew
    by ~1.5x what it wrote instead of ~1.15x (measured, 0.71 GiB adapter)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _streamed(table, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]], pop) -> list[TensorSpec]:
    """Writer specs of the torch tensors of the leaves ``shapes`` (path -> (shape, dtype));
    ``pop(path)`` gives a leaf's array. Each leaf is converted when its first tensor is read and
    dropped with its last one (one leaf in memory twice at most)."""
    layout = torch_layout(table, {k: s for k, (s, _) in shapes.items()})
    pending: dict[str, dict[str, np.ndarray]] = {}

    def read(key: str, path: str):
        if path not in pending:
            pending[path] = table.to_torch({path: pop(path)})
        out = pending[path].pop(key)
        if not pending[path]:
            del pending[path]
        return out

    return [(key, shape, np.dtype(shapes[path][1]), (lambda key=key, path=path: read(key, path)))
            for key, (path, shape) in layout.items()]


def export(folder: str, out: str, fmt: str, *, max_shard_gb: float = 5.0, overwrite: bool = False) -> str:
    """Writes ``out`` in ``fmt`` (see the module docstring); returns a one-line summary."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    config = config_io.load_config(folder)
    thinker = canonical_config(config.thinker)
    saved = orbax_io.params_metadata(folder)
    check_arrays(saved, config, source=folder)
    part = FORMATS[fmt]
    if part not in config.contents:
        raise ValueError(f"{folder}: holds {list(config.contents)} only, so there is no {part} to write "
                         f"(--format {fmt}); convert it with to-jax --{'hf' if part == 'base' else 'adapter'}")
    if fmt == "hf" and config.hf_config is None:
        raise ValueError(f"{folder}: its {config_io.CONFIG_FILE} carries no HF config.json to write back "
                         "(it was converted without --hf / an HF --config)")
    shapes = {k: saved[k] for k in expected_variables(thinker, [part])}
    specs = _streamed(thinker_table(thinker), shapes, LazyLeaves(folder, shapes).pop)
    n = sum(int(np.prod(s)) for _, s, _, _ in specs)
    if fmt == "hf":
        shards = write_hf_checkpoint(out, config.hf_config, specs, max_shard_bytes=int(max_shard_gb * 2**30),
                                     overwrite=overwrite)
        note = f"{len(shards)} shard(s)"
        if "adapter" in config.contents:
            note += "; its I-LoRA weights are not in an HF checkpoint: --format adapter writes them"
    else:
        save_adapter(out, {key: read() for key, _, _, read in specs}, overwrite=overwrite)
        note = "finetune_weights.bin layout"
    return f"wrote {out}: {len(specs)} tensors, {n:,} values ({fmt}: {note})"


def to_torch(args: argparse.Namespace) -> str:
    """The parsed ``to-torch`` options (:func:`.arguments.add_to_torch_arguments`)."""
    return export(args.checkpoint, args.out, args.format, max_shard_gb=args.max_shard_gb, overwrite=args.overwrite)
