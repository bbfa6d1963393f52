"""``inspect``: what a checkpoint holds and how it lines up with a family's mapping tables.

For torch / HF / safetensors files: every tensor (name, shape, dtype), the parameter count,
which table each key matched and the keys no row matches (the family's ``classify_keys``).
For a converted crab_jax checkpoint: every array, the parameter count, and the family's
check of the arrays against the model its config describes. For a training run (its
workdir or one ``checkpoints/<step>``): its arrays and parameter count.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.family_converter import FamilyConverter
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.converted import latest_run_step_dir


def _table_lines(rows) -> list[str]:
    width = max([len(r[0]) for r in rows] + [10])
    return [f"  {name:<{width}}  {str(list(shape)):<20} {dtype}" for name, shape, dtype in rows]


def _counts(meta) -> tuple[int, list[str]]:
    """``(values, dtypes)`` of name -> (shape, dtype)."""
    return sum(int(np.prod(s)) for s, _ in meta.values()), sorted({str(d) for _, d in meta.values()})


def inspect_path(path: str, converter: FamilyConverter, *, show_tensors: bool = True) -> str:
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a training run's workdir: its latest step
        path = str(latest_run_step_dir(path))
    if orbax_io.is_checkpoint(path):
        if os.path.isfile(os.path.join(path, converter.config_file)):
            return _inspect_checkpoint(path, converter, show_tensors)
        return _inspect_run_step(path, show_tensors)
    tensors = open_tensors(path)
    meta = {k: (tensors.shape(k), tensors.dtype(k)) for k in tensors}
    n, dtypes = _counts(meta)
    matched, unmatched = converter.classify_keys(list(meta))
    out = [f"{path}: {type(tensors).__name__}, {len(meta)} tensors, {n:,} values, dtypes {dtypes}"]
    if tensors.extra:
        out.append(f"extra entries: {sorted(tensors.extra)}")
    if show_tensors:
        out += _table_lines([(k, s, d) for k, (s, d) in meta.items()])
    out.append("mapping rows matched:")
    out += [f"  {table}: {count} keys" for table, count in sorted(Counter(matched.values()).items())]
    out.append(f"keys no mapping row matches: {len(unmatched)}")
    out += [f"  {k}" for k in unmatched]
    return "\n".join(out)


def _inspect_run_step(path: str, show_tensors: bool) -> str:
    """A training run's checkpoint step: its trainable arrays, in the run's layout."""
    meta = orbax_io.params_metadata(path)
    n, dtypes = _counts(meta)
    out = [f"{path}: crab_jax training-run checkpoint (trainable weights only, in the run's layout: layers "
           f"stacked if it scanned them, vocabulary rows padded), {len(meta)} arrays, {n:,} values, dtypes {dtypes}"]
    if show_tensors:
        out += _table_lines([(k, s, d) for k, (s, d) in meta.items()])
    out.append("no mapping rows apply: merge it over its base with `from-run`, then inspect / to-torch the result")
    return "\n".join(out)


def _inspect_checkpoint(path: str, converter: FamilyConverter, show_tensors: bool) -> str:
    meta = orbax_io.params_metadata(path)
    n, dtypes = _counts(meta)
    check = converter.check_checkpoint(path, meta)
    out = [f"{path}: crab_jax checkpoint, {len(meta)} arrays, {n:,} values, dtypes {dtypes}", check.about]
    if show_tensors:
        out += _table_lines([(k, s, d) for k, (s, d) in meta.items()])
    out.append(check.problems or "every array matches the config's model (names and shapes)")
    out.append(f"arrays no mapping row matches: {len(check.unmatched)}")
    out += [f"  {k}" for k in check.unmatched]
    return "\n".join(out)
