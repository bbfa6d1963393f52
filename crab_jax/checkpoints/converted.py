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

A run that starts from the base LLM (pretraining) also differs in its vocabulary: a trainable
embedding / LM head with fewer rows than the run's vocabulary gets the saved rows and keeps
its fresh initialisation for the rest (the added tokens' rows, as the original's
``resize_token_embeddings`` draws them). Modules a run never uses (``unused``, e.g. the
audio projector in visual pretraining, the seg module without the seg branch) may be absent
altogether: their frozen weights keep the seed's values.

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


def _paddable(saved: tuple, wanted: tuple, vocab: tuple[int, int] | None, grow: bool = False) -> bool:
    """Same rank, and every differing dim grows ``vocab_size`` -> ``padded_vocab_size`` (with
    ``grow``: any smaller vocabulary -> ``padded_vocab_size``)."""
    if len(saved) != len(wanted) or vocab is None:
        return False
    return all(s == w or (w == vocab[1] and (s == vocab[0] or (grow and s < vocab[0])))
               for s, w in zip(saved, wanted))


def _short_rows(saved: tuple, wanted: tuple, vocab: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(axis, saved rows)`` when ``saved`` has fewer vocabulary rows than the run's vocabulary."""
    if vocab is None or len(saved) != len(wanted):
        return None
    return next(((i, s) for i, (s, w) in enumerate(zip(saved, wanted)) if w == vocab[1] and s < vocab[0]), None)


def _modules(names) -> str:
    """``"vl_projector (83 arrays), seg_module (145 arrays)"``: names counted by their first part."""
    counts = collections.Counter(name.split(".")[0] for name in names)
    return ", ".join(f"{m} ({n} array{'s' * (n != 1)})" for m, n in counts.items())


def plan_load(saved: Mapping[str, tuple], wanted: Mapping[str, Any], *, vocab: tuple[int, int] | None = None,
              optional: frozenset[str] = frozenset(), growable: frozenset[str] = frozenset(),
              source: str = "checkpoint") -> dict[str, list[str]]:
    """Target name -> the saved names it is read from (one, or one per layer to stack).

    ``wanted``: target name -> object with ``.shape``; ``vocab``: ``(vocab_size, padded_vocab_size)``;
    ``optional``: target names the checkpoint may lack (left out of the plan); ``growable``:
    names whose saved vocabulary dim may be shorter than ``vocab_size`` (the rest is filled by
    the caller). Raises :class:`ConvertedCheckpointError` naming every missing / unexpected /
    mis-shaped key, and the modules the missing ones belong to.
    """
    per_layer = per_layer_names(saved)
    plan, problems, missing = {}, [], []
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
                missing.append(name)
            continue
        for part in parts:
            found = tuple(saved[part][0])
            if found != part_shape and not _paddable(found, part_shape, vocab, grow=parts == [name] and name in growable):
                short = _short_rows(found, part_shape, vocab)
                why = (f" (fewer rows than the run's vocabulary of {vocab[0]}: a frozen weight cannot start "
                       "the added tokens' rows fresh; convert it with the file that holds them)") if short else ""
                problems.append(f"{part}: expected shape {part_shape}, found {found}{why}")
        plan[name] = parts
    used = {p for parts in plan.values() for p in parts}
    problems += [f"unexpected {name} {tuple(saved[name][0])}" for name in sorted(set(saved) - used)]
    if missing:
        problems.insert(0, f"weights of module(s) this run uses are missing: {_modules(missing)}")
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
                           optional: frozenset[str] = frozenset(),
                           fresh: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """Name -> array for every ``wanted`` name (``ShapeDtypeStruct`` with ``.sharding``) the
    checkpoint holds, read from ``<ckpt_dir>/params`` (see the module docstring).

    ``vocab``: ``(vocab_size, padded_vocab_size)`` of the run's LLM (allows zero padding there);
    ``optional``: names that may be absent (they are absent from the result too); ``fresh``:
    freshly initialised values of names whose saved vocabulary may be shorter than the run's:
    their rows past the saved ones are taken from here.
    """
    fresh = fresh or {}
    saved = saved_shapes(ckpt_dir)
    plan = plan_load(saved, wanted, vocab=vocab, optional=optional, growable=frozenset(fresh),
                     source=f"{ckpt_dir}/{PARAMS_DIR}")
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
        grows = name in fresh and parts == [name]
        short = _short_rows(tuple(saved[name][0]), tuple(wanted[name].shape), vocab) if grows else None
        if short is not None:
            out[name] = _row_merger(wanted[name].sharding, *short)(out[name], fresh[name])
    return out


@functools.lru_cache(maxsize=None)
def _row_merger(sharding, axis: int, rows: int):
    """``(saved, fresh) -> saved`` below index ``rows`` of ``axis``, ``fresh`` from there on."""
    def merge(saved, fresh):
        index = jax.lax.broadcasted_iota(jnp.int32, saved.shape, axis)
        return jnp.where(index < rows, saved, fresh.astype(saved.dtype))
    return jax.jit(merge, out_shardings=sharding)


def _module(name: str) -> str:
    return name.split(".", 1)[0]


def _may_come_from_seed(saved: Mapping[str, tuple], param_names, frozen_names, unused: tuple[str, ...]) -> set[str]:
    """Frozen names a converted checkpoint may lack: those of the modules the run never uses
    (``unused``), and those of a module the run trains that the checkpoint has nothing of
    (its buffers, e.g. a new Q-Former's position ids, start with the rest of it)."""
    held = {_module(n) for n in saved}
    new = {_module(n) for n in param_names} - held
    return {n for n in frozen_names if _module(n) in new or _module(n) in unused}


def frozen_from_seed(ckpt_dir, abstract_params: dict, abstract_frozen: dict, vocab: tuple[int, int],
                     unused: tuple[str, ...] = ()) -> list[str]:
    """The frozen weights :func:`load_run_weights` would leave at their seed values (``unused``:
    module paths the run never uses, e.g. ``"seg_module"``): the caller must draw them. Reads
    metadata only, and raises as :func:`load_run_weights` would (before anything is drawn)."""
    saved = saved_shapes(ckpt_dir)
    params, frozen = flat_leaves(abstract_params), flat_leaves(abstract_frozen)
    seed = _may_come_from_seed(saved, params, frozen, tuple(unused))
    plan = plan_load(saved, {**frozen, **params}, vocab=vocab, optional=frozenset(set(params) | seed),
                     growable=frozenset(params), source=f"{ckpt_dir}/{PARAMS_DIR}")
    return sorted(seed - set(plan))


def load_run_weights(ckpt_dir, params: dict, frozen: dict, abstract_params: dict, abstract_frozen: dict,
                     vocab: tuple[int, int], unused: tuple[str, ...] = ()) -> tuple[dict, dict, list[str]]:
    """``(params, frozen, fresh)``: a run's initial trainable / frozen weights from a converted
    checkpoint. ``vocab`` = ``(vocab_size, padded_vocab_size)`` of the LLM (zero padding between them).

    Every frozen weight of a module the run uses must be in it (the error names the missing
    weights and their modules); the frozen weights of ``unused`` modules (module paths, e.g.
    ``"al_projector"``), and the buffers of a trained module it has nothing of, may be absent
    and keep their value in ``frozen`` (the seed's: :func:`frozen_from_seed`). A
    trainable weight it lacks (Q-Formers and LoRA when pretraining from the base LLaMA / CLIP /
    BEATs) keeps its value in ``params`` (the fresh initialisation); one with fewer vocabulary
    rows (the base LLaMA's embeddings) gets the saved rows and keeps the fresh ones after them.
    ``fresh`` lists every weight not read whole from the checkpoint.
    """
    wanted_params, wanted_frozen = flat_leaves(abstract_params), flat_leaves(abstract_frozen)
    saved = saved_shapes(ckpt_dir)
    optional = set(wanted_params) | _may_come_from_seed(saved, wanted_params, wanted_frozen, tuple(unused))
    fresh_params = flat_leaves(params)
    loaded = load_converted_weights(ckpt_dir, {**wanted_frozen, **wanted_params}, vocab=vocab,
                                    optional=frozenset(optional), fresh=fresh_params)
    grown = {n for n in loaded if n in saved and n in fresh_params
             and _short_rows(tuple(saved[n][0]), tuple(wanted_params[n].shape), vocab) is not None}
    absent = (set(wanted_params) | set(wanted_frozen)) - set(loaded)
    return _fill(params, loaded), _fill(frozen, loaded), sorted(absent | grown)


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
                    frozen: dict, unused: tuple[str, ...] = ()) -> tuple[dict, dict, list[str]]:
    """A run's starting weights: ``params`` / ``frozen`` (the seed's), then ``model.init_checkpoint``
    (a converted folder), then each of ``model.init_from_runs`` (earlier stages' workdirs), in
    that order; returns log lines saying what came from where.

    ``model_cfg``: the run config's ``model`` section; ``abstract_state``: the run's abstract
    train state (``.params`` / ``.frozen`` with shardings); ``vocab``: the LLM's
    ``(vocab_size, padded_vocab_size)``; ``unused``: module paths the run never uses (the
    converted checkpoint may lack them; ``frozen`` must then hold their seed values)."""
    notes = []
    abstract = (abstract_state.params, abstract_state.frozen, vocab)
    if model_cfg.init_checkpoint:
        params, frozen, fresh = load_run_weights(model_cfg.init_checkpoint, params, frozen, *abstract, unused=unused)
        notes.append(f"weights from the converted checkpoint {model_cfg.init_checkpoint}" + (
            f"; {len(fresh)} array(s) not (wholly) in it start fresh or from the seed: {', '.join(fresh[:8])}"
            + (" ..." if len(fresh) > 8 else "") if fresh else ""))
    if model_cfg.init_from_runs:
        params, frozen, report = overlay_run_weights(tuple(model_cfg.init_from_runs), params, frozen, *abstract)
        notes += [f"{len(names)} array(s) from the run {wd}: {', '.join(names[:6])}" + (" ..." if len(names) > 6 else "")
                  for wd, names in report.items()]
    return params, frozen, notes
