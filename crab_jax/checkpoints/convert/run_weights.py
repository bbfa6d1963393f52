"""A crab_jax training run's weights -> the converter's canonical layout, over a base checkpoint.

A run saves only its trainable weights, in the run's layout (scanned layers stacked into
``[layers, ...]``, vocabulary rows padded to ``model.vocab_pad_multiple``, trainable dtype).
``from-run`` puts them back into the canonical layout over a converted ``--base`` checkpoint
holding the rest (the frozen weights the run started from), so the result is a whole
converted checkpoint: ``to-torch`` exports it, ``model.init_checkpoint`` starts another run
from it.

The run's layout is read from the shapes against the base: a run array named like a base
layer entry without its index (``llm.model.layers.mlp.up_proj.weight`` for
``llm.model.layers.{i}.mlp.up_proj.weight``) is split along its first axis; a dim longer than
the base's vocabulary dim is cut back to it. Anything else that differs is an error naming
each key.
"""

from __future__ import annotations

import numpy as np

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.converted import latest_run_step_dir, per_layer_names


def _unpad(value: np.ndarray, want: tuple[int, ...], vocab: int) -> np.ndarray | None:
    """``value`` cut back to ``want`` along vocabulary dims, or None if it is not that."""
    if value.ndim != len(want):
        return None
    for axis, (have, need) in enumerate(zip(value.shape, want)):
        if have != need:
            if need != vocab or have < need:
                return None
            value = np.take(value, np.arange(need), axis=axis)
    return value


def canonical_run_weights(run: dict[str, np.ndarray], base: dict[str, tuple[tuple[int, ...], np.dtype]],
                          vocab: int, *, source: str) -> dict[str, np.ndarray]:
    """Run arrays (run layout) -> base names and shapes (canonical layout); see the module docstring.

    ``base``: name -> (shape, dtype) of the base checkpoint; ``vocab``: its vocabulary size
    (-1 when it has no vocabulary dims).
    """
    stacked = per_layer_names(base)
    out, problems = {}, []
    for name, value in run.items():
        if name in base:
            parts = {name: value}
        elif name in stacked and sorted(stacked[name]) == list(range(value.shape[0] if value.ndim else -1)):
            parts = {stacked[name][i]: value[i] for i in range(value.shape[0])}
        else:
            problems.append(f"{name} {tuple(value.shape)}: no such weight in the base checkpoint")
            continue
        for key, part in parts.items():
            fitted = _unpad(np.asarray(part), base[key][0], vocab)
            if fitted is None:
                problems.append(f"{key}: the base has shape {base[key][0]}, the run {tuple(np.shape(part))}")
            else:
                out[key] = fitted
    if problems:
        raise MappingError(f"{source}: the run's weights do not fit the base checkpoint "
                           f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return out


def merge_run_weights(workdir: str, base: str, vocab: int, *, dtype=None) -> tuple[dict[str, np.ndarray], str, int]:
    """``(flat, note, step)``: ``base``'s arrays with the latest weights of the run in ``workdir`` over them.

    Each array keeps the base's dtype unless ``dtype`` (every float array) is given.
    """
    step_dir = latest_run_step_dir(workdir)
    flat = orbax_io.restore_flat(base)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}
    run = canonical_run_weights(orbax_io.restore_flat(str(step_dir)), shapes, vocab, source=str(step_dir))
    for key, value in run.items():
        flat[key] = value.astype(shapes[key][1]) if dtype is None else value
    if dtype is not None:
        flat = {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in flat.items()}
    return flat, f"{len(run)} arrays from {step_dir} over {base}", int(step_dir.name)
