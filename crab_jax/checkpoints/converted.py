"""A run's starting weights: a converted checkpoint (``tools/convert_weights`` to-jax output,
``model.init_checkpoint``), then the saved weights of earlier stages' runs (``model.init_from_runs``).

The converter writes one canonical layout (``<dir>/params``, Orbax; ``<dir>/crab_config.json``):
one entry per layer (``llm.model.layers.3.self_attn.q_proj.weight``) and the vocabulary
unpadded, in the dtype it was asked for. A run may differ from it in exactly three ways,
bridged here while reading:

* scanned layers: the run's ``llm.model.layers.self_attn.q_proj.weight`` ``[layers, ...]`` is
  stacked from the per-layer entries (each read straight into its own shards);
* vocabulary padding (``model.vocab_pad_multiple``): embedding / LM-head dims of
  ``vocab_size`` grow to ``padded_vocab_size`` with zero rows (Orbax pads while reading);
* dtype: each array is cast to the run's dtype (fp32 trainable, bf16 frozen, ...).

Anything else that differs (a missing, unexpected or mis-shaped key) raises
:class:`ConvertedCheckpointError` naming every key before any tensor is read. Each process
reads only the shards its devices hold, so a 7B model never materialises on one host.
Paths may be local or ``gs://``.

An earlier run's checkpoint (``<workdir>/checkpoints/<step>/params``) is the same kind of
Orbax tree, read the same way; it holds only that stage's trainable weights, which land in
this run's trainable or frozen set, wherever their names are (:func:`initial_weights`).
"""

from __future__ import annotations

import collections
import functools
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from crab_jax.io.paths import as_path
from crab_jax.models.state_dict import flat_leaves, key_path_str

PARAMS_DIR = "params"
# ".3." in "llm.model.layers.3.self_attn..." (a layer index between two name parts).
_INDEX = re.compile(r"\.(\d+)(?=\.)")


class ConvertedCheckpointError(ValueError):
    """The converted checkpoint does not hold this run's weights (names every offending key)."""


def nest(flat: Mapping[str, Any]) -> dict:
    """``{"a.b.c": x}`` -> ``{"a": {"b": {"c": x}}}`` (keys stay strings)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"parameter path {key!r} runs through a leaf")
        node[leaf] = value
    return out


def saved_shapes(ckpt_dir) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Name -> (shape, dtype) of every array in ``<ckpt_dir>/params`` (reads metadata only)."""
    path = as_path(ckpt_dir) / PARAMS_DIR
    if not path.exists():
        raise FileNotFoundError(f"{ckpt_dir}: not a crab_jax checkpoint (no Orbax '{PARAMS_DIR}' folder in it; "
                                "write one with: python -m tools.convert_weights to-jax ...)")
    meta = ocp.PyTreeCheckpointer().metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return {k: (tuple(m.shape), m.dtype) for k, m in flat_leaves(tree).items()}


def per_layer_names(names) -> dict[str, dict[int, str]]:
    """``{"a.layers.x": {0: "a.layers.0.x", 1: "a.layers.1.x"}}``: each name with one layer index
    taken out (the name a scanned model has), grouped, by index."""
    groups: dict[str, dict[int, str]] = collections.defaultdict(dict)
    for name in names:
        for m in _INDEX.finditer(name):
            groups[name[:m.start()] + name[m.end():]][int(m.group(1))] = name
    return dict(groups)


def _paddable(saved: tuple, wanted: tuple, vocab: tuple[int, int] | None) -> bool:
    """Same rank, and every differing dim grows ``vocab_size`` -> ``padded_vocab_size``."""
    if len(saved) != len(wanted) or vocab is None or vocab[0] == vocab[1]:
        return False
    return all(s == w or (s, w) == vocab for s, w in zip(saved, wanted))


def plan_load(saved: Mapping[str, tuple], wanted: Mapping[str, Any], *, vocab: tuple[int, int] | None = None,
              optional: frozenset[str] = frozenset(), source: str = "checkpoint") -> dict[str, list[str]]:
    """Target name -> the saved names it is read from (one, or one per layer to stack).

    ``wanted``: target name -> object with ``.shape``; ``vocab``: ``(vocab_size, padded_vocab_size)``;
    ``optional``: target names the checkpoint may lack (left out of the plan).
    Raises :class:`ConvertedCheckpointError` naming every missing / unexpected / mis-shaped key.
    """
    per_layer = per_layer_names(saved)
    plan, problems = {}, []
    for name, target in wanted.items():
        shape = tuple(target.shape)
        if name in saved:
            parts, part_shape = [name], shape
        elif name in per_layer:
            layers = per_layer[name]
            if not shape or sorted(layers) != list(range(shape[0])):
                problems.append(f"{name}: expected {shape[0] if shape else 0} stacked layers {shape}, the checkpoint "
                                f"has layer(s) {sorted(layers)} ({layers[min(layers)]} ...)")
                continue
            parts, part_shape = [layers[i] for i in range(shape[0])], shape[1:]
        else:
            if name not in optional:
                problems.append(f"missing {name} (expected shape {shape})")
            continue
        for part in parts:
            found = tuple(saved[part][0])
            if found != part_shape and not _paddable(found, part_shape, vocab):
                problems.append(f"{part}: expected shape {part_shape}, found {found}")
        plan[name] = parts
    used = {p for parts in plan.values() for p in parts}
    problems += [f"unexpected {name} {tuple(saved[name][0])}" for name in sorted(set(saved) - used)]
    if problems:
        raise ConvertedCheckpointError(
            f"{source}: does not hold this run's weights ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return plan


def _part_sharding(sharding, stacked: bool):
    """The sharding of one layer of a stacked array (its leading dim dropped)."""
    if stacked and isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    return sharding


@functools.lru_cache(maxsize=None)
def _stacker(sharding):
    """One jitted stack per target sharding (jit then caches per shape: q/k/v/o share one compile)."""
    return jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding)


def load_converted_weights(ckpt_dir, wanted: Mapping[str, Any], *, vocab: tuple[int, int] | None = None,
                           optional: frozenset[str] = frozenset()) -> dict[str, jax.Array]:
    """Name -> array for every ``wanted`` name (``ShapeDtypeStruct`` with ``.sharding``) the
    checkpoint holds, read from ``<ckpt_dir>/params`` (see the module docstring).

    ``vocab``: ``(vocab_size, padded_vocab_size)`` of the run's LLM (allows zero padding there);
    ``optional``: names that may be absent (they are absent from the result too).
    """
    saved = saved_shapes(ckpt_dir)
    plan = plan_load(saved, wanted, vocab=vocab, optional=optional, source=f"{ckpt_dir}/{PARAMS_DIR}")
    restore_args = {}
    for name, parts in plan.items():
        target = wanted[name]
        stacked = parts != [name]
        shape = tuple(target.shape)[1:] if stacked else tuple(target.shape)
        for part in parts:
            restore_args[part] = ocp.ArrayRestoreArgs(
                sharding=_part_sharding(target.sharding, stacked), global_shape=shape, dtype=target.dtype,
                strict=tuple(saved[part][0]) == shape)
    restored = flat_leaves(ocp.PyTreeCheckpointer().restore(
        as_path(ckpt_dir) / PARAMS_DIR, args=ocp.args.PyTreeRestore(restore_args=nest(restore_args))))
    out = {}
    for name, parts in plan.items():
        if parts == [name]:
            out[name] = restored.pop(name)
        else:
            out[name] = _stacker(wanted[name].sharding)(*[restored.pop(p) for p in parts])
    return out


def load_run_weights(ckpt_dir, params: dict, frozen: dict, abstract_params: dict, abstract_frozen: dict,
                     vocab: tuple[int, int]) -> tuple[dict, dict, list[str]]:
    """``(params, frozen, fresh)``: a run's initial trainable / frozen weights from a converted
    checkpoint. Every frozen weight must be in it; a trainable one it lacks (Q-Formers and
    LoRA when pretraining from the base LLaMA / CLIP / BEATs) keeps its value in ``params``
    (the fresh initialisation) and is listed in ``fresh``. ``vocab`` = ``(vocab_size, padded_vocab_size)`` of the LLM (zero padding between them).
    """
    wanted_params, wanted_frozen = flat_leaves(abstract_params), flat_leaves(abstract_frozen)
    loaded = load_converted_weights(ckpt_dir, {**wanted_frozen, **wanted_params},
                                    vocab=vocab,
                                    optional=frozenset(wanted_params))
    return _fill(params, loaded), _fill(frozen, loaded), sorted(set(wanted_params) - set(loaded))


def _fill(tree, loaded: Mapping[str, jax.Array]):
    """``tree`` with the leaves named in ``loaded`` replaced."""
    return jax.tree_util.tree_map_with_path(lambda path, x: loaded.get(key_path_str(path), x), tree)


def latest_run_step_dir(workdir):
    """``<workdir>/checkpoints/<latest committed step>`` of a crab_jax training run."""
    directory = as_path(workdir) / "checkpoints"
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    manager.close()
    if step is None:
        raise FileNotFoundError(f"config model.init_from_runs: {workdir} has no committed checkpoint in {directory}")
    return directory / str(step)


def overlay_run_weights(workdirs, params: dict, frozen: dict, abstract_params: dict, abstract_frozen: dict,
                        vocab: tuple[int, int]) -> tuple[dict, dict, dict[str, list[str]]]:
    """``(params, frozen, loaded names per workdir)``: the weights earlier training runs (stages)
    saved, read over ``params`` / ``frozen`` wherever they belong in this run (a stage's
    trainable weight may be frozen in the next). Later workdirs win. A saved weight this model
    does not have, or of another shape, is an error naming it."""
    wanted = {**flat_leaves(abstract_frozen), **flat_leaves(abstract_params)}
    report = {}
    for workdir in workdirs:
        loaded = load_converted_weights(latest_run_step_dir(workdir), wanted, optional=frozenset(wanted),
                                        vocab=vocab)
        params, frozen = _fill(params, loaded), _fill(frozen, loaded)
        report[str(workdir)] = sorted(loaded)
    return params, frozen, report


def initial_weights(model_cfg, abstract_state, vocab: tuple[int, int], params: dict,
                    frozen: dict) -> tuple[dict, dict, list[str]]:
    """A run's starting weights: ``params`` / ``frozen`` (the seed's), then ``model.init_checkpoint``
    (a converted folder), then each of ``model.init_from_runs`` (earlier stages' workdirs), in
    that order; returns log lines saying what came from where.

    ``model_cfg``: the run config's ``model`` section; ``abstract_state``: the run's abstract
    train state (``.params`` / ``.frozen`` with shardings); ``vocab``: the LLM's
    ``(vocab_size, padded_vocab_size)``."""
    notes = []
    abstract = (abstract_state.params, abstract_state.frozen, vocab)
    if model_cfg.init_checkpoint:
        params, frozen, fresh = load_run_weights(model_cfg.init_checkpoint, params, frozen, *abstract)
        notes.append(f"weights from the converted checkpoint {model_cfg.init_checkpoint}" + (
            f"; {len(fresh)} trainable array(s) not in it start fresh: {', '.join(fresh[:8])}"
            + (" ..." if len(fresh) > 8 else "") if fresh else ""))
    if model_cfg.init_from_runs:
        params, frozen, report = overlay_run_weights(tuple(model_cfg.init_from_runs), params, frozen, *abstract)
        notes += [f"{len(names)} array(s) from the run {wd}: {', '.join(names[:6])}" + (" ..." if len(names) > 6 else "")
                  for wd, names in report.items()]
    return params, frozen, notes
