"""``python -m crab_jax.infer --weights W (--input samples.json --media-root DIR | --data-root ROOT
--tasks T,...) --output preds.jsonl``: generation on converted weights (no training run needed).

``W`` is a ``crab-convert-weights to-jax`` folder (``params/`` + the family's config file,
optionally ``tokenizer/`` from ``to-jax --tokenizer``) or a training run's workdir (its latest
committed checkpoint over its ``model.init_checkpoint``). The requests come from exactly one of:

* ``--input samples.json``: requests on the user's own clips, paths relative to
  ``--media-root``, in the family's format (``family.read_quick_start``): Crab, the original's
  quick-start input (``data/example.json``: ``{"task": ..., "video_path" / "image_path" /
  "audio_path" / "mask_path" / "question" / "exp": ...}``); Crab+,
  :mod:`crab_jax.data.records.crab_plus_requests` (the AV-UIE v2 test prompt of the task);
* ``--data-root ROOT --tasks T,...``: a dataset's records of those tasks (``--split``, default
  ``test``; Crab: the AV-UIE layout, ``family.read_records``), media relative to ROOT. An
  entry the reader rejects is logged with its file and reason, counted, and written as a
  line with ``error`` (``evaluate`` counts it as unusable in its task's table).

The work is :func:`crab_jax.evaluation.quick_start.run_quick_start`.

Exit status: 0 when at least one item was predicted (the number of failed items is
printed), 1 when every item failed, 2 on unusable arguments (weights, input file, data
root, tasks, tokenizer).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Sequence

from absl import logging as absl_logging

from crab_jax import families
from crab_jax.checkpoints.convert.output import TOKENIZER_DIR
from crab_jax.checkpoints.converted import ConvertedCheckpointError
from crab_jax.cli.workdir_model import load_model, saved_run_config
from crab_jax.config.schema import get_config
from crab_jax.config.sections import DataConfig, RunConfig
from crab_jax.data.errors import BadRecordError
from crab_jax.data.sources import gt_as_answer, prepare_data
from crab_jax.evaluation.converted_model import load_converted_model
from crab_jax.evaluation.quick_start import DEFAULT_LENGTH_MULTIPLE, QuickStartOptions, run_quick_start
from crab_jax.io.paths import as_path
from crab_jax.training.setup import resolve

log = logging.getLogger("crab_jax.infer")
DEFAULT_FAMILY = "crab"


class UsageError(ValueError):
    """An argument the quick start cannot use (exit status 2)."""


@dataclasses.dataclass
class LoadedWeights:
    """A model ready to generate, and what came with it.

    data: the data section whose media sizes (frame / audio slots) the example builder uses.
    tokenizer: a tokenizer object that came with the weights (a run's), else None.
    tokenizer_dir: a tokenizer folder stored with the weights (``W/tokenizer``), else None.
    """

    family: Any
    model_cfg: Any
    model: Any
    data: DataConfig
    tokenizer: Any = None
    tokenizer_dir: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.infer --weights",
        description="Quick start: generate answers (and masks) for the original's quick-start samples, or for "
                    "a dataset's records of some tasks, with converted weights; writes one JSON line per sample in the original's infer_results.jsonl "
                    "format (+ predict, mask_tokens, finished, mask file paths).",
        allow_abbrev=False)
    p.add_argument("--weights", required=True,
                   help="a crab-convert-weights to-jax folder (params/ + crab_config.json), or a training workdir")
    p.add_argument("--input", default="", help="quick-start samples JSON (the original's data/example.json format)")
    p.add_argument("--media-root", default="", help="with --input: folder the samples' media paths are relative to")
    p.add_argument("--data-root", default="", help="instead of --input: a dataset root (Crab: AV-UIE layout) whose "
                                                   "records of --tasks are generated for")
    p.add_argument("--tasks", default="", help="with --data-root: comma-separated tasks (e.g. avqa,ave,s4)")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="with --data-root: the records' split (default test: the test prompts, GT in each line)")
    p.add_argument("--max-items", type=int, default=0,
                   help="with --data-root: at most this many records of each task, in reading order (0 = all)")
    p.add_argument("--output", required=True, help="predictions file to write (JSON lines, one per sample)")
    p.add_argument("--masks-dir", default="", help="where mask PNG / logits / overlay files go "
                                                   "(default: <output folder>/masks)")
    p.add_argument("--tokenizer", default="", help=f"Hugging Face tokenizer folder (default: WEIGHTS/{TOKENIZER_DIR}, "
                                                   "stored by to-jax --tokenizer)")
    p.add_argument("--family", default=DEFAULT_FAMILY, choices=families.names(),
                   help="model family of a converted folder (a workdir's run config names its own)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="generated tokens per sample (default 0: the original's per task; Crab: 500 text, 100 masks; Crab+: 512)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per generation batch (pads are masked)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the original); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus mass (1 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--length-multiple", type=int, default=DEFAULT_LENGTH_MULTIPLE,
                   help="prompt lengths are bucketed to multiples of this (one compile per bucket)")
    p.add_argument("--right-padding", action="store_true",
                   help="pad each batch's prompts on the right, as the original Crab+ inference does (batches of "
                        "4): its shorter prompts then generate after pad tokens. Only to reproduce its numbers; "
                        "the default left padding gives every sample its batch-of-1 answer (Crab refuses it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def default_data() -> DataConfig:
    return RunConfig.from_config(get_config()).data


def _no_tokenizer(weights: str) -> UsageError:
    return UsageError(f"no tokenizer: --weights {weights} has no {TOKENIZER_DIR}/ folder; pass --tokenizer DIR "
                      f"(or convert with crab-convert-weights to-jax --tokenizer DIR)")


def load_weights(weights: str, family_name: str, tokenizer_arg: str = "") -> LoadedWeights:
    """The model of a converted folder or of a training workdir (see the module docstring).
    A converted folder without a tokenizer (and no ``tokenizer_arg``) is refused before any
    weight is read."""
    path = as_path(weights)
    if (path / "checkpoints").is_dir():
        run, family = resolve(saved_run_config(path))
        data = prepare_data(run.data, family, progress=False)
        setup, model = load_model(run, family, path, data)
        log.info("model of the run %s (family %s)", weights, family.name)
        # The run's data section sized its training batches; the requests get the default media slots.
        return LoadedWeights(family, setup.model_cfg, model, default_data(), tokenizer=data.tokenizer)
    family = families.get(family_name)
    config_file = family.converter.config_file if family.converter is not None else None
    if not (path / "params").is_dir() or (config_file and not (path / config_file).is_file()):
        raise UsageError(f"--weights {weights}: neither a converted checkpoint (params/ + {config_file}) nor a "
                         "training workdir (checkpoints/); convert with: crab-convert-weights to-jax --out DIR ...")
    stored = path / TOKENIZER_DIR
    if not tokenizer_arg and not stored.is_dir():
        raise _no_tokenizer(weights)
    model_cfg, model = load_converted_model(family, weights)
    log.info("model of the converted checkpoint %s (family %s)", weights, family.name)
    return LoadedWeights(family, model_cfg, model, default_data(),
                         tokenizer_dir=str(stored) if stored.is_dir() else None)


def load_tokenizer(loaded: LoadedWeights, tokenizer_arg: str, weights: str):
    """``--tokenizer``, else the one stored with the weights; a clear error when there is none."""
    folder = tokenizer_arg or loaded.tokenizer_dir
    if folder:
        return loaded.family.load_tokenizer(folder)
    if loaded.tokenizer is not None:
        return loaded.tokenizer
    raise _no_tokenizer(weights)


@dataclasses.dataclass
class Requests:
    """What to generate for: records, the root their media paths are relative to, and the
    ``(task, error)`` of every entry the dataset reader rejected."""

    records: list
    media_root: str
    read_errors: list = dataclasses.field(default_factory=list)


def parse_tasks(value: str) -> tuple[str, ...]:
    tasks = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if not tasks:
        raise UsageError("--data-root needs --tasks T,... (comma-separated task names, e.g. avqa,ave,s4)")
    return tasks


def read_dataset(family, root: str, tasks: Sequence[str], split: str, max_items: int, seed: int) -> Requests:
    """The records of ``tasks`` under ``root`` (at most ``max_items`` per task when > 0), each
    task read alone so that a rejected entry is attributed to its task. Every rejected entry
    is logged with its file and reason. A test record's GT becomes its target, as in training's
    held-out split (the builder tokenizes one; the prompt batch cuts it off)."""
    records, errors = [], []
    for task in tasks:
        found, bad = family.read_records(root, (task,), split, seed=seed)
        records += gt_as_answer(found[:max_items] if max_items > 0 else found)
        errors += [(task, e) for e in bad]
        for e in bad:
            log.warning("%s record not read: %s: %s", task, e.path, e.reason)
        log.info("%s: %d %s records, %d entries not read", task, len(found), split, len(bad))
    if not records:
        raise UsageError(f"--data-root {root}: no {split} records of tasks {','.join(tasks)} "
                         f"({len(errors)} entries not read" + (f", first: {errors[0][1]}" if errors else "") + ")")
    return Requests(records, root, errors)


def check_request_args(args) -> None:
    """Refuses a request flag combination before any weight is read: exactly one of ``--input``
    (with ``--media-root``) and ``--data-root`` (with ``--tasks``)."""
    if bool(args.input) == bool(args.data_root):
        raise UsageError("give exactly one of --input samples.json (quick-start samples, with --media-root) or "
                         "--data-root ROOT (a dataset's records, with --tasks)")
    if args.input:
        dataset_only = [f for f, v in (("--tasks", args.tasks), ("--max-items", args.max_items)) if v]
        if dataset_only:
            raise UsageError(f"{', '.join(dataset_only)}: only with --data-root")
        if not os.path.isdir(args.media_root):
            raise UsageError(f"--media-root {args.media_root or '(not given)'}: not a folder "
                             "(--input samples' media paths are relative to it)")
        return
    if args.media_root:
        raise UsageError("--media-root is for --input; with --data-root the records' media are under the data root")
    if not os.path.isdir(args.data_root):
        raise UsageError(f"--data-root {args.data_root}: not a folder")
    if args.max_items < 0:
        raise UsageError(f"--max-items must be >= 0 (0 = all), got {args.max_items}")
    parse_tasks(args.tasks)


def weights_family(weights: str, family_name: str):
    """The family of ``--weights``: a workdir's run names its own, a converted folder is ``--family``'s."""
    path = as_path(weights)
    if (path / "checkpoints").is_dir():
        return resolve(saved_run_config(path))[1]
    return families.get(family_name)


def read_samples(family, input_file: str, media_root: str) -> Requests:
    """The requests of ``--input`` in the family's format (Crab: the original's quick-start
    samples; Crab+: AV-UIE v2 test prompts on the user's clips)."""
    if family.read_quick_start is None:
        raise UsageError(f"model family {family.name!r} reads no --input requests; use --data-root ROOT --tasks ...")
    records = family.read_quick_start(input_file).records
    if not records:
        raise UsageError(f"--input {input_file}: no samples")
    return Requests(records, media_root)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every restore at INFO
    try:
        options = QuickStartOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                    seed=args.seed, length_multiple=args.length_multiple,
                                    padding="right" if args.right_padding else "left",
                                    progress=not args.no_progress)
        check_request_args(args)
        # A bad samples file is refused before any weight is read; dataset records are read with
        # the weights' family (a workdir's run names its own).
        requests = read_samples(weights_family(args.weights, args.family), args.input,
                                args.media_root) if args.input else None
        loaded = load_weights(args.weights, args.family, args.tokenizer)
        tokenizer = load_tokenizer(loaded, args.tokenizer, args.weights)
        if requests is None:
            requests = read_dataset(loaded.family, args.data_root, parse_tasks(args.tasks), args.split,
                                    args.max_items, int(loaded.data.seed))
        records = requests.records
        tasks = tuple(sorted({r.task for r in records}))
        builder = loaded.family.example_builder(loaded.model_cfg, dataclasses.replace(loaded.data, tasks=tasks),
                                                requests.media_root, tokenizer)
    except (UsageError, BadRecordError, FileNotFoundError, ConvertedCheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_quick_start(loaded.family, loaded.model, loaded.model_cfg, builder, tokenizer, records,
                             media_root=requests.media_root, output=args.output, masks_dir=args.masks_dir or None,
                             options=options, read_errors=requests.read_errors)
    rate = result.done / result.seconds if result.seconds > 0 else 0.0
    unread = f", {result.unreadable} entries the reader rejected" if result.unreadable else ""
    print(f"{result.done + result.failed} samples in {result.seconds:.1f} s ({rate:.2f} samples/s): "
          f"{result.done} predicted, {result.failed} failed{unread}; wrote {args.output}")
    return 1 if result.failed and not result.done else 0
