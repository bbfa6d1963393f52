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
``crab_plus_config.json`` (names and shapes). Memory: only the arrays of the format are
restored; each is converted when the writer reaches it and dropped, so the process holds
about one copy of what it writes.
"""

from __future__ import annotations

import argparse
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


def _streamed(table, flat: dict[str, np.ndarray]) -> list[TensorSpec]:
    """Writer specs of the torch tensors of ``flat``; each leaf is converted when its first tensor
    is read and dropped from ``flat`` with its last one (one leaf in memory twice at most)."""
    layout = torch_layout(table, {k: v.shape for k, v in flat.items()})
    pending: dict[str, dict[str, np.ndarray]] = {}

    def read(key: str, path: str):
        if path not in pending:
            pending[path] = table.to_torch({path: flat.pop(path)})
        out = pending[path].pop(key)
        if not pending[path]:
            del pending[path]
        return out

    return [(key, shape, flat[path].dtype, (lambda key=key, path=path: read(key, path)))
            for key, (path, shape) in layout.items()]


def export(folder: str, out: str, fmt: str, *, max_shard_gb: float = 5.0, overwrite: bool = False) -> str:
    """Writes ``out`` in ``fmt`` (see the module docstring); returns a one-line summary."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    config = config_io.load_config(folder)
    thinker = canonical_config(config.thinker)
    check_arrays(orbax_io.params_metadata(folder), config, source=folder)
    part = FORMATS[fmt]
    if part not in config.contents:
        raise ValueError(f"{folder}: holds {list(config.contents)} only, so there is no {part} to write "
                         f"(--format {fmt}); convert it with to-jax --{'hf' if part == 'base' else 'adapter'}")
    if fmt == "hf" and config.hf_config is None:
        raise ValueError(f"{folder}: its {config_io.CONFIG_FILE} carries no HF config.json to write back "
                         "(it was converted without --hf / an HF --config)")
    names = list(expected_variables(thinker, [part]))
    table = thinker_table(thinker)
    flat = restore_subset(folder, names)
    specs = _streamed(table, flat)
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
