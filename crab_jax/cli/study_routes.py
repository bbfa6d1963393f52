"""``python -m crab_jax.study routes --weights W --out DIR``: where a trained model's I-LoRA routers
send each held-out token (:mod:`crab_jax.study.routes` writes the folder).

``W`` is a training run's workdir (its latest committed checkpoint over the frozen weights the
trainer builds) or a ``crab-convert-weights to-jax`` folder. The batches are the held-out split
(``--split test``, the trainer's) or the training batches (``--split train``) of a run config:
the workdir's own stored config, or ``--config FILE[:VARIANT]``; ``--set KEY=VALUE`` changes
keys of either (e.g. ``--set data.tasks=('avqa','ave')``, ``--set data.path=DIR``). A
converted folder has no run config: ``--config`` is required (its data section; the model comes
from the folder). For a workdir the model is always the one its stored config describes.

Exit status 0 when the folder is written, 2 on an unusable command line (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import ml_collections
from absl import logging as absl_logging

from crab_jax.checkpoints.converted import ConvertedCheckpointError
from crab_jax.cli.infer import eval_batches
from crab_jax.cli.workdir_model import load_model, saved_run_config
from crab_jax.config.check import ConfigError, check_against_schema
from crab_jax.config.command_line import fail
from crab_jax.config.loader import apply_overrides, load_config
from crab_jax.data.sources import prepare_data
from crab_jax.evaluation.converted_model import load_converted_model
from crab_jax.io.paths import as_path
from crab_jax.study.routes import INDEX_JSON, run_routes
from crab_jax.training.setup import resolve

log = logging.getLogger("crab_jax.study")

DEFAULT_MAX_BATCHES = 8


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2 (no usage block)."""

    def error(self, message):
        fail(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m crab_jax.study routes",
        description="Record the softmax gates of every I-LoRA layer of the LLM for each real token of "
                    "held-out batches (teacher-forced: prompt and answer), per task, layer, projection and "
                    "token modality (text / visual / audio); write them as .npy arrays with index.json, and "
                    "heat maps: mean gate per task x head, the same per layer, and a clustered task x task "
                    "routing similarity.",
        epilog="Files: DIR/gates.npy [tokens, layers, projections, heads], DIR/token_*.npy (task, modality, "
               "sample, position, target per token), DIR/{tasks,layers,projections,heads,modalities}.npy "
               "(axis names), the summaries, DIR/index.json (every array's shape, axes and meaning), "
               "DIR/routes_head_task.png, DIR/routes_layers.png, DIR/routes_similarity.png.",
        allow_abbrev=False)
    p.add_argument("--weights", required=True,
                   help="a training run's workdir (holding checkpoints/) or a crab-convert-weights to-jax folder")
    p.add_argument("--out", required=True, help="folder to write the arrays, index.json and the figures into")
    p.add_argument("--config", default="",
                   help="run config FILE[:VARIANT] whose data section gives the batches (default: the workdir's "
                        "stored config; required with a converted folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of that config (repeatable), e.g. --set data.tasks=\"('avqa','ave')\"")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="the held-out split (test; random data: batches of a seed the trainer never used) or the "
                        "training batches")
    p.add_argument("--max-batches", type=int, default=DEFAULT_MAX_BATCHES,
                   help=f"batches to run (0: the whole split; default {DEFAULT_MAX_BATCHES})")
    p.add_argument("--batch-size", type=int, default=0, help="samples per batch (0: the config's eval.batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while preparing data")
    return p


def parse_args(argv: Sequence[str]):
    args = build_parser().parse_args(argv)
    if args.max_batches < 0 or args.batch_size < 0:
        fail(f"--max-batches {args.max_batches} / --batch-size {args.batch_size}: expected >= 0")
    return args


def checked_config(args, weights) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict | None]:
    """``(data config, the workdir's stored config or None)``, schema-checked, overrides applied."""
    stored = None
    if (weights / "checkpoints").is_dir():
        stored = ml_collections.ConfigDict(saved_run_config(weights))
    elif not (weights / "params").is_dir():
        raise ValueError(f"--weights {args.weights}: neither a training workdir (checkpoints/) nor a converted "
                         "folder (params/ + the family's config file)")
    if args.config:
        config = load_config(args.config, args.set)
    elif stored is not None:
        config = apply_overrides(ml_collections.ConfigDict(stored.to_dict()), args.set)
        check_against_schema(config, source=f"--weights {args.weights} (its stored run config)")
    else:
        raise ValueError(f"--weights {args.weights} is a converted folder: pass --config FILE for the data to run "
                         "(e.g. the config the model was trained with)")
    if args.batch_size:
        config.eval.batch_size = args.batch_size
    return config, stored


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    weights = as_path(args.weights)
    if not weights.is_dir():
        fail(f"--weights {args.weights}: no such folder (a training workdir or a converted checkpoint folder)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every restore at INFO
    try:
        config, stored = checked_config(args, weights)
        run, family = resolve(config)
        if run.data.source == "random" and not args.max_batches:
            raise ValueError("--max-batches 0 runs the whole split, but data.source='random' batches never end: "
                             "pass --max-batches N")
        data = prepare_data(run.data, family, progress=not args.no_progress)
        mesh = None
        if stored is not None:
            model_run, model_family = resolve(stored)
            if model_family.name != family.name:
                raise ValueError(f"--config names model.family={family.name!r}, the run in {args.weights} is "
                                 f"{model_family.name!r}")
            model_data = data if model_run.data == run.data else prepare_data(model_run.data, family, progress=False)
            setup, model = load_model(model_run, family, weights, model_data)
            model_cfg, mesh = setup.model_cfg, setup.mesh
        else:
            model_cfg, model = load_converted_model(family, weights)
        batches, _ = eval_batches(run, family, model_cfg, data, args.split)
    except (ConfigError, ConvertedCheckpointError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        routes = run_routes(family, model, model_cfg, batches, tuple(run.data.tasks), args.out,
                            max_batches=args.max_batches or None, mesh=mesh)
    except ValueError as e:  # no I-LoRA layer, no batch
        fail(str(e))
    tokens = {t: int((routes.task == i).sum()) for i, t in enumerate(routes.tasks)}
    print(f"{routes.gates.shape[0]} tokens x {len(routes.layers)} layers x {len(routes.projections)} projections x "
          f"{routes.num_heads} heads ({args.split} split); tokens per task: "
          + ", ".join(f"{t} {n}" for t, n in tokens.items()))
    print(f"wrote {as_path(args.out) / INDEX_JSON} and the figures")
    return 0
